"""fcos-exp tune as a user runs it without a terminal (a log file, nohup, sbatch, CI) and stops it with a
signal: real processes, real Optuna journal, real MLflow; training paused at a known step (conftest)."""
import re
import signal
import subprocess
import sys

import mlflow
import pytest
from conftest import pause_env, run_cli, wait_paused
from test_tune import journal_study, states, write_space

# lr only: every trial trains the params' 2 epochs (half of the 12 images at batch 4: 2 steps an epoch)
LR_SPACE = "train.lr: {type: float, low: 0.001, high: 0.01, log: true}\n"


@pytest.fixture
def logged_project(project):
    import yaml
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["train"]["epochs"] = 2
    p["tune"]["train_fraction"] = 0.5   # the step counts below, whatever the default fidelity
    (project / "params.yaml").write_text(yaml.safe_dump(p))
    write_space(project, LR_SPACE)
    assert run_cli("prepare").exit_code == 0
    return project


def start(reap, project, log, trials, env, *extra):
    """`fcos-exp tune` with stdout and stderr to a file, SIGINT handled as in a terminal (a test run started
    in the background inherits it ignored)."""
    p = subprocess.Popen([sys.executable, "-m", "pipeline", "tune", "--trials", str(trials), *extra],
                         cwd=project, env={**env, "NO_COLOR": "1"}, stdout=log, stderr=subprocess.STDOUT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    reap(p)
    return p


@pytest.mark.slow
def test_log_file_gets_a_line_per_epoch_and_per_trial_as_they_happen(logged_project, reap):
    env, release = pause_env(logged_project, 3)      # trial 0, epoch 2 of 2
    log_path = logged_project / "tune.log"
    with open(log_path, "w") as log:
        p = start(reap, logged_project, log, 2, env)
        wait_paused(p, release)
        # While trial 0 trains its second epoch, its first is already in the file (flushed, not at the end).
        text = log_path.read_text()
        assert re.search(r"^trial 0 epoch 1/2: val AP50 \d\.\d{4} \(\d+ s\)$", text, re.M), text
        assert "trial 0 epoch 2/2" not in text
        release.touch()
        assert p.wait(timeout=600) == 0, log_path.read_text()
    text = log_path.read_text()
    for n in (0, 1):
        assert re.search(rf"^trial {n} epoch 2/2: val AP50 ", text, re.M), text
        # number, state, value, params, seconds, best so far
        line = rf"^trial {n} COMPLETE: AP50 \d\.\d{{4}} \| lr=[\d.e-]+ \| \d+ s \| best trial \d \d\.\d{{4}}$"
        assert re.search(line, text, re.M), text
    assert "(defaults)" in text and re.search(r"this run's wall time \d+", text), text
    assert "\x1b[" not in text                        # no terminal control codes in a log


@pytest.mark.slow
def test_sigterm_fails_and_requeues_the_running_trial_then_the_study_continues(logged_project, tracking_uri, reap):
    env, release = pause_env(logged_project, 3)
    log_path = logged_project / "tune.log"
    with open(log_path, "w") as log:
        p = start(reap, logged_project, log, 2, env)
        wait_paused(p, release)
        p.send_signal(signal.SIGTERM)
        release.touch()                               # training goes on to its next step, and stops there
        assert p.wait(timeout=300) == 128 + signal.SIGTERM, log_path.read_text()
    text = log_path.read_text()
    assert "SIGTERM: stopping after the current training step" in text
    assert "stopped by SIGTERM: 0 of 2 trials done; run the same command again to continue the study" in text, text
    assert "Traceback" not in text
    study = journal_study(logged_project)
    assert states(study) == ["FAIL", "WAITING"]       # never left RUNNING; its params are queued again
    stopped, queued = study.trials
    assert queued.system_attrs["fixed_params"] == stopped.params    # what a WAITING trial will run
    assert queued.user_attrs == {"retry_of": 0, "baseline": True}

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(stopped.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["stopped_by"] == "SIGTERM"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"

    r = run_cli("tune", "--trials", "2")
    assert r.exit_code == 0, r.stderr
    study = journal_study(logged_project)
    assert states(study) == ["COMPLETE", "COMPLETE", "FAIL"]
    assert study.trials[1].params == stopped.params and study.trials[1].user_attrs["baseline"]


@pytest.mark.slow
def test_sigint_to_the_parent_of_workers_stops_every_worker_cleanly(logged_project, tracking_uri, reap):
    env, release = pause_env(logged_project, 3)
    log_path = logged_project / "tune.log"
    with open(log_path, "w") as log:
        p = start(reap, logged_project, log, 4, env, "--workers", "2")
        reached = release.with_name(release.name + ".reached")
        wait_paused(p, release)                       # one worker is paused; the other may be at any point
        p.send_signal(signal.SIGINT)                  # the parent only: it forwards the stop to its workers
        release.touch()
        assert p.wait(timeout=300) == 128 + signal.SIGINT, log_path.read_text()
        assert reached.exists()
    text = log_path.read_text()
    assert "stopped by SIGINT" in text and "run the same command again to continue the study" in text, text
    study = journal_study(logged_project)
    assert "RUNNING" not in states(study), states(study)
    client = mlflow.MlflowClient(tracking_uri)
    for t in study.get_trials():
        if "mlflow_run_id" in t.user_attrs:
            assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status != "RUNNING"
