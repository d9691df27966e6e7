"""MLflow data is neither lost nor doubled: a resumed training after SIGKILL, Ctrl-C or SIGTERM logs every step
once; a sync that needs two tries leaves evaluate logging into the real run; a tracking URI changed between
train and evaluate keeps the run in its own store; workers creating a fresh store together all succeed;
unusable URIs and stores are one line, at once."""
import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import yaml
from conftest import pause_env, tiny_params, wait_paused


def cli(project, *args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=project, env=env or os.environ,
                          capture_output=True, text=True, timeout=600, **kw)


def make_project(path, uri, **overrides):
    path.mkdir(exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump(tiny_params(**overrides), sort_keys=False))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    assert cli(path, "prepare", env=env).returncode == 0
    return env


def run_id(project):
    return json.loads((project / "models/mlflow_run.json").read_text())["run_id"]


def steps(uri, run, metric):
    return sorted(m.step for m in mlflow.MlflowClient(uri).get_metric_history(run, metric))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["kill", "ctrl-c", "term"])
def test_a_resumed_training_logs_every_step_once(tmp_path, sig):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = make_project(tmp_path / "p", uri, train={"epochs": 3}, tracking={"enabled": True, "experiment": "t",
                                                                            "log_every": 2})
    pause, release = pause_env(tmp_path, 5)            # 3 steps an epoch: step 5 is inside epoch 2
    train = subprocess.Popen([sys.executable, "-m", "pipeline", "train"], cwd=tmp_path / "p",
                             env={**pause, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_paused(train, release)
    train.send_signal(sig)
    release.touch()
    _, err = train.communicate(timeout=300)
    assert train.returncode != 0
    if sig == signal.SIGTERM:
        assert train.returncode == 143 and "terminated" in err and "--resume" in err
    r = cli(tmp_path / "p", "train", "--resume", env=env)
    assert r.returncode == 0, r.stderr
    run = run_id(tmp_path / "p")
    assert steps(uri, run, "train/final_loss") == list(range(1, 10))      # each of the 9 steps once
    assert steps(uri, run, "train/lr") == list(range(1, 10))
    assert steps(uri, run, "epoch/final_loss") == [1, 2, 3]


@pytest.mark.slow
def test_a_sync_that_needs_two_tries_gives_evaluate_the_real_run(tmp_path):
    project, uri = tmp_path / "p", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = make_project(project, uri, tracking={"enabled": True, "experiment": "t", "log_every": 20})
    offline = {**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}          # nothing listens on port 9: MLflow unreachable
    r = cli(project, "train", env=offline)
    assert r.returncode == 0 and "unreachable" in r.stderr
    assert run_id(project).startswith("pending-")
    # The queue was meant for the unreachable server; it comes back at another address (here: sqlite).
    queue = project / "models/mlflow_pending.jsonl"
    queue.write_text("".join(json.dumps({**json.loads(line), "uri": uri}) + "\n"
                             for line in queue.read_text().splitlines()))
    summary = project / "metrics/train.json"
    kept = summary.read_bytes()
    summary.unlink()                                    # an artifact the queue names is gone: the first try fails
    r = cli(project, "sync", env=env)
    assert r.returncode == 2 and "operations kept" in r.stderr
    real = run_id(project)
    assert not real.startswith("pending-")             # the run exists now, and the run file says which
    summary.write_bytes(kept)
    assert cli(project, "sync", env=env).returncode == 0 and not queue.exists()
    r = cli(project, "evaluate", env=env)
    assert r.returncode == 0, r.stderr
    assert "not in MLflow yet" not in r.stderr and not queue.exists()
    assert "test/AP50" in mlflow.MlflowClient(uri).get_run(real).data.metrics


@pytest.mark.slow
def test_a_tracking_uri_changed_after_train_keeps_evaluate_in_the_runs_store(tmp_path):
    project, first = tmp_path / "p", f"sqlite:///{tmp_path / 'first.db'}"
    env = make_project(project, first, tracking={"enabled": True, "experiment": "t", "log_every": 20})
    assert cli(project, "train", env=env).returncode == 0
    other = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'other.db'}"}
    r = cli(project, "evaluate", env=other)
    assert r.returncode == 0, r.stderr
    assert f"is in {first}" in r.stderr and "unreachable" not in r.stderr
    assert not (project / "models/mlflow_pending.jsonl").exists()
    assert "test/AP50" in mlflow.MlflowClient(first).get_run(run_id(project)).data.metrics


def test_workers_creating_a_fresh_store_together_all_succeed(tmp_path):
    code = ("import sys; from pipeline.tracking.store import client, experiment_id; "
            "print(experiment_id(client(sys.argv[1]), 'shared'))")
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-500:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1   # one experiment, found by all


@pytest.mark.parametrize("uri, says", [("mlruns", "a folder (MLflow's file store"),
                                        ("file:///tmp/mlruns", "a folder (MLflow's file store")])
def test_an_unusable_tracking_uri_is_one_line(project, monkeypatch, uri, says):
    from conftest import run_cli
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    r = run_cli("report")
    assert r.exit_code == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_relative_sqlite_uri_is_made_absolute_from_the_project_root(project, monkeypatch):
    from pipeline.tracking import tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/mlflow.db")
    assert tracking_uri() == f"sqlite:///{project / 'stores/mlflow.db'}"


def test_report_in_a_read_only_project_is_one_line_at_once(project, tmp_path, monkeypatch):
    """A read-only folder without a store: MLflow would retry creating the database for minutes."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "params.yaml").write_text((project / "params.yaml").read_text())
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True)
    if mounted.returncode or os.access(ro, os.W_OK) and subprocess.run(["touch", str(ro / "x")]).returncode == 0:
        pytest.skip("no read-only bind mount here (needs root and CAP_SYS_ADMIN)")
    try:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        start = time.monotonic()
        r = cli(ro, "report", env=env)
        assert time.monotonic() - start < 60              # a hang guard: MLflow's retries took ~2 minutes
        assert r.returncode == 2 and "mlflow.db: no MLflow store there and its folder cannot be written" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        subprocess.run(["umount", str(ro)])


def test_an_experiment_name_mlflow_would_refuse_is_refused_at_once(project):
    from conftest import run_cli
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

    from pipeline.params_schema import EXPERIMENT_NAME_MAX
    assert EXPERIMENT_NAME_MAX == MAX_EXPERIMENT_NAME_LENGTH
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tracking"]["experiment"] = "x" * 600
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    r = run_cli("train")
    assert r.exit_code == 2 and "tracking.experiment: must be at most 500 characters" in r.stderr
