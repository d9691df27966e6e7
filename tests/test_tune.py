"""fcos-exp tune: real Optuna storages (journal file, PostgreSQL), real MLflow, real training on the tiny config."""
import os
import shutil
import signal
import subprocess
import sys

import mlflow
import optuna
import pytest
import yaml
from conftest import pause_env, run_cli, wait_paused

from pipeline.tuning.study import STUDY_UID

SPACE = "train.lr: {type: float, low: 0.001, high: 0.01, log: true}\ntrain.epochs: {type: int, low: 1, high: 2}\n"


def write_space(project, space=SPACE):
    """experiments/tune_space.yaml of the project: the search space `fcos-exp tune` reads."""
    (project / "experiments").mkdir()
    (project / "experiments/tune_space.yaml").write_text(space)


@pytest.fixture
def tune_project(project):
    write_space(project)
    assert run_cli("prepare").exit_code == 0
    return project


def journal_study(project, name="fcos-exp"):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = JournalStorage(JournalFileBackend(str(project / "experiments/optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def states(study):
    return sorted(t.state.name for t in study.get_trials())


@pytest.mark.slow
def test_study_completes_with_nested_mlflow_runs_and_best_params(tune_project, tracking_uri):
    r = run_cli("tune", "--trials", "3")
    assert r.exit_code == 0, r.stderr
    study = journal_study(tune_project)
    assert len([t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]) == 3
    # Trial 0 is the current params, run to the end whatever the pruner says: what the defaults score.
    assert study.trials[0].user_attrs["baseline"] and study.trials[0].state.name == "COMPLETE"
    assert study.trials[0].params == {"train.lr": 0.002, "train.epochs": 1}
    best = yaml.safe_load((tune_project / "experiments/best_params.yaml").read_text())
    assert best["trial"] == study.best_trial.number and best["params"] == study.best_trial.params
    assert best["baseline"]["trial"] == 0 and best["baseline"]["value"] == study.trials[0].value

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("tests")
    uid = study.user_attrs[STUDY_UID]   # the session's store holds other tests' studies of this name
    parent = client.search_runs([exp.experiment_id], "tags.optuna_study = 'fcos-exp' and tags.fcos_role = 'study' "
                                                     f"and tags.{STUDY_UID} = '{uid}'")
    assert len(parent) == 1
    tags = parent[0].data.tags
    assert tags["optuna_storage"] == "experiments/optuna.journal"
    assert tags["optuna_dashboard"] == "optuna-dashboard experiments/optuna.journal"
    assert "optuna-dashboard experiments/optuna.journal" in tags["mlflow.note.content"]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert len(children) == 3
    assert {c.data.tags["optuna_state"] for c in children} <= {"COMPLETE", "PRUNED"}
    for c in children:
        n = int(c.data.tags["optuna_trial"])
        assert float(c.data.params["train.lr"]) == pytest.approx(study.trials[n].params["train.lr"])
        assert study.trials[n].user_attrs["mlflow_run_id"] == c.info.run_id   # the study links to its runs
        assert client.get_metric_history(c.info.run_id, "val/AP50")
    figures = {a.path for a in client.list_artifacts(parent[0].info.run_id, "optuna")}
    assert "optuna/tuning_history.png" in figures

    # Running again continues the same study: 3 more trials make 5 in all.
    assert run_cli("tune", "--trials", "5").exit_code == 0
    assert len(journal_study(tune_project).get_trials()) == 5

    before = (tune_project / "params.yaml").read_text().splitlines()
    r = run_cli("tune", "--apply")
    assert r.exit_code == 0, r.stderr
    from pipeline.params import load_params
    p = load_params("params.yaml")
    assert f"(trial {best['trial']}: AP50 {best['value']:.4f} on {p.tune.train_fraction:.0%} of the training images; " \
           f"the params before, trial 0: {best['baseline']['value']:.4f})" in r.stderr.replace("\n", " "), r.stderr
    assert p.train.lr == best["params"]["train.lr"] and p.train.epochs == best["params"]["train.epochs"]
    after = (tune_project / "params.yaml").read_text().splitlines()
    changed = [b.split(":")[0].strip() for b, a in zip(before, after, strict=True) if a != b]
    assert set(changed) <= {"lr", "epochs", "backbone"}, changed   # the rest as it was: nulls stay `null`


@pytest.mark.slow
def test_two_projects_with_one_study_name_keep_their_own_parent_runs(tune_project, tracking_uri, tmp_path_factory,
                                                                      monkeypatch):
    """CI found a study's parent run holding 10 trials of 3: an earlier project's study of the same name, tracked
    into the same experiment, lent it its parent run."""
    assert run_cli("tune", "--trials", "1").exit_code == 0
    other = tmp_path_factory.mktemp("other")
    shutil.copytree(tune_project, other, dirs_exist_ok=True, ignore=shutil.ignore_patterns("optuna.journal*"))
    monkeypatch.chdir(other)
    assert run_cli("tune", "--trials", "1").exit_code == 0
    assert run_cli("tune", "--trials", "2").exit_code == 0      # the second project's study goes on in its own run

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("tests")
    parents = client.search_runs([exp.experiment_id], "tags.optuna_study = 'fcos-exp' and tags.fcos_role = 'study'")
    uids = {journal_study(d).user_attrs[STUDY_UID]: d for d in (tune_project, other)}
    mine = {r.data.tags[STUDY_UID]: r for r in parents if r.data.tags[STUDY_UID] in uids}
    assert len(uids) == 2 and len(mine) == 2
    for uid, project in uids.items():
        children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{mine[uid].info.run_id}'")
        assert sorted(c.info.run_id for c in children) == \
            sorted(t.user_attrs["mlflow_run_id"] for t in journal_study(project).get_trials())
    # The report of the second project counts its own study's runs only.
    from pipeline.params import load_params
    from pipeline.report.tuning import tuning_section
    section = tuning_section(load_params("params.yaml"), client.search_runs([exp.experiment_id]), None, None,
                             tmp_path_factory.mktemp("assets"))
    own = mine[journal_study(other).user_attrs[STUDY_UID]]
    assert section["mlflow"]["parents"] == [(own.info.run_name, own.info.run_id)]
    assert sum(section["mlflow"]["counts"].values()) == 2


def worker(project, trials, extra=(), env=None):
    env = {**(env or os.environ), "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "tune", "--trials", str(trials), *extra], cwd=project,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def no_tracking(project):
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["tracking"]["enabled"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(p))


def counted(study):
    return [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]


@pytest.mark.slow
def test_two_separate_processes_run_exactly_the_trials_asked(tune_project):
    """Issue 31.8: two workers and --trials 4 ended with 5 COMPLETE trials (Optuna's MaxTrialsCallback
    counts after the fact); a worker now starts no trial once the study has enough, running ones included."""
    no_tracking(tune_project)
    a, b = worker(tune_project, 4), worker(tune_project, 4)
    for w in (a, b):
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-2000:]
    study = journal_study(tune_project)
    assert len(counted(study)) == 4 and states(study).count("RUNNING") == 0, states(study)
    assert len({t.user_attrs["worker"] for t in study.get_trials()}) == 2


@pytest.mark.slow
def test_workers_option_shares_the_cores_and_the_study(tune_project):
    no_tracking(tune_project)
    w = worker(tune_project, 4, ["--workers", "2", "--threads", "1"])
    out, err = w.communicate(timeout=600)
    assert w.returncode == 0, err[-2000:]
    study = journal_study(tune_project)
    assert len(counted(study)) == 4 and states(study).count("RUNNING") == 0, states(study)
    assert len({t.user_attrs["worker"] for t in study.get_trials()}) == 2
    assert {t.user_attrs["torch_threads"] for t in study.get_trials()} == {1}
    assert "[worker 0] trial" in err and "[worker 1] trial" in err   # both workers' lines, relayed


@pytest.mark.slow
def test_killed_worker_trial_is_retried_and_its_mlflow_run_ended(tune_project, tracking_uri, reap):
    """Issue 31.8: a SIGKILLed worker's trial is failed and queued again by the next worker, and its nested
    MLflow run ends KILLED instead of staying RUNNING forever."""
    env, release = pause_env(tune_project, 1)
    w = worker(tune_project, 2, env=env)
    reap(w)
    wait_paused(w, release)                            # the first trial is training, paused after step 1
    running = [t for t in journal_study(tune_project).get_trials() if t.state.name == "RUNNING"]
    assert len(running) == 1
    run_id = running[0].user_attrs["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    w.send_signal(signal.SIGKILL)
    w.wait()
    r = run_cli("tune", "--trials", "2")
    assert r.exit_code == 0, r.stderr
    assert f"trial {running[0].number}: its worker" in r.stderr
    study = journal_study(tune_project)
    killed = study.trials[running[0].number]
    assert killed.state.name == "FAIL"
    retry = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == killed.number]
    assert retry and retry[0].params == killed.params and retry[0].state.name in ("COMPLETE", "PRUNED")
    assert retry[0].user_attrs["baseline"]             # the killed trial was the current params' one
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["optuna_state"] == "FAIL"


@pytest.mark.parametrize("space,message", [
    ("train.lrr: {type: float, low: 0.1, high: 1}\n", "train.lrr: not a params.yaml key"),
    ("train.lr: {type: float, low: 0.1, high: 0.01}\n", "empty range"),
    ("train.lr: {type: gaussian}\n", "type must be float, int or categorical"),
    ("model.backbone: {type: categorical, choices: []}\n", "non-empty choices"),
])
def test_bad_search_space_is_one_line(project, space, message):
    write_space(project, space)
    r = run_cli("tune", "--trials", "1")
    assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_range_of_one_value_fixes_that_param(project):
    from pipeline.params import load_params
    from pipeline.tuning.space import load_space, suggest
    (project / "space.yaml").write_text("train.epochs: {type: int, low: 6, high: 6}\n")
    study = optuna.create_study()
    space = load_space(project / "space.yaml", load_params("params.yaml"))
    assert suggest(study.ask(), space) == {"train.epochs": 6}


def test_unreachable_storage_is_one_line(project):
    write_space(project)
    r = run_cli("tune", "--storage", "postgresql+psycopg2://u:p@127.0.0.1:9/db")
    assert r.exit_code == 2 and "storage unreachable" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "u:p" not in r.stderr


def _sqlite_file(path):
    import sqlite3
    with sqlite3.connect(path) as db:
        db.execute("create table t (x)")


@pytest.mark.parametrize("kind,message", [
    ("text", "not an Optuna journal file"),
    ("json", "not an Optuna journal file"),
    ("binary", "not an Optuna journal file"),
    ("sqlite", "an SQLite database, not an Optuna journal file: use --storage sqlite:///"),
])
def test_storage_file_that_is_not_a_journal_is_refused_untouched(project, kind, message):
    """Issue 31.3: `--storage FILE` on a one-line text file appended an Optuna record to it; other files gave
    a KeyError traceback. Now: one line naming the file, and the file is left as it was."""
    write_space(project)
    f = project / f"notes.{kind}"
    if kind == "sqlite":
        _sqlite_file(f)
    else:
        f.write_bytes({"text": b"my notes about the study\n", "json": b'{"study": "mine", "trials": 3}\n',
                       "binary": bytes(range(256))}[kind])
    before = f.read_bytes()
    r = run_cli("tune", "--trials", "1", "--storage", str(f))
    assert r.exit_code == 2 and message in r.stderr and str(f) in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert f.read_bytes() == before
    assert not (project / "experiments/best_params.yaml").exists()


def test_report_reads_no_study_from_a_file_that_is_not_a_journal(project):
    from pipeline.tuning.storage import open_study
    f = project / "notes.txt"
    f.write_text("my notes\n")
    study, why = open_study(str(f), "fcos-exp")
    assert study is None and str(f) in why and "not an Optuna journal file" in why
    assert f.read_text() == "my notes\n"


@pytest.mark.parametrize("value,outside", [(0.002, None), (0.02, "train.lr=0.02 lies outside the search space")])
def test_baseline_trial_is_the_current_params_inside_the_space(value, outside):
    from conftest import tiny_params

    from pipeline.tuning.space import baseline_values
    space = yaml.safe_load(SPACE)
    from pipeline.params_schema import Params
    values, why = baseline_values(Params.from_dict(tiny_params(train={"lr": value})), space)
    assert why == outside
    assert values == (None if outside else {"train.lr": value, "train.epochs": 1})
