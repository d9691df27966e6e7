"""Round 4 of the fault tests (issue 31), tracking: `fcos-exp sync` stopped midway or run while an offline
training goes on, evaluating into a run again or into one deleted in MLflow, a queue kept for a store that is
gone, and the advice when validation never measures the best metric."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import pause_env, run_cli, tiny_params, wait_paused
from test_pipeline_best import train_params
from test_reliability_round4 import cli, one_line

pytestmark = pytest.mark.timeout(900)   # a hang guard


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "ctrl-c"])
def test_a_sync_stopped_midway_and_run_again_doubles_no_run_and_no_table(tmp_path, sig):
    """A long offline queue (a run created offline, its table, 1500 metric sends) and `fcos-exp sync` stopped
    (SIGKILL, Ctrl-C) once it has created the run: sync used to keep the queue whole, so the next one created
    a second run, gave it the data, left models/mlflow_run.json on the first, empty one, and appended the
    table's rows again (MLflow's log_table appends)."""
    import mlflow
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    models = tmp_path / "models"
    models.mkdir()
    pending = "pending-0123"
    records = [{"run": pending, "op": "create", "payload": {"experiment": "sync", "run_name": "offline"}, "uri": uri},
               {"run": pending, "op": "table", "payload": {"data": {"a": [1, 2]}, "name": "t.json"}, "uri": uri}]
    records += [{"run": pending, "op": "metrics", "payload": [["m", float(s), s, 1000 + s]], "uri": uri}
                for s in range(1500)]
    (models / "mlflow_pending.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (models / "mlflow_run.json").write_text(json.dumps({"run_id": pending, "tracking_uri": uri}))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "sync"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        import time
        while json.loads((models / "mlflow_run.json").read_text())["run_id"] == pending:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(sig)
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert [*models.glob("mlflow_pending.jsonl*")]              # stopped before the end (1500 sends)
    r = cli(tmp_path, "sync", env=env)
    assert r.returncode == 0, r.stderr
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sync").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0].info.run_id
    assert json.loads((models / "mlflow_run.json").read_text())["run_id"] == run
    assert sorted(m.step for m in client.get_metric_history(run, "m")) == list(range(1500))
    table = json.loads(Path(client.download_artifacts(run, "t.json", str(tmp_path / "dl"))).read_text())
    assert len(table["data"]) == 2, table


@pytest.mark.slow
def test_evaluating_into_a_run_again_replaces_its_tables(project, tracking_uri):
    """evaluate run twice into the run of the last train (a changed decode.score_thresh re-runs it): MLflow's
    log_table appended the second evaluation's rows to the first's."""
    import mlflow
    for stage in ("prepare", "train", "evaluate", "evaluate"):
        r = run_cli(stage)
        assert r.exit_code == 0, r.stderr
    client = mlflow.MlflowClient(tracking_uri)
    run = json.loads((project / "models/mlflow_run.json").read_text())["run_id"]
    for name, rows in (("eval/per_class_ap.json", 6), ("eval/map_table.json", 12)):
        table = json.loads(Path(client.download_artifacts(run, name, str(project / "dl"))).read_text())
        assert len(table["data"]) == rows and len(table["columns"]) in (2, 3), table
    listed = json.loads(client.get_run(run).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "eval/per_class_ap.json", "type": "table"} in listed and len(listed) == 2


@pytest.mark.slow
def test_a_best_metric_validation_never_measures_gets_the_right_advice(tmp_path):
    """train.best_metric APl on 96-px images (no large object in the validation split): every validation gives
    None, patience stops training, and evaluate with eval.checkpoint best advised to "set train.eval_every > 0",
    which was set."""
    train_params(tmp_path, epochs=3, best_metric="APl", patience=1)
    assert cli(tmp_path, "prepare").returncode == 0
    r = cli(tmp_path, "train")
    assert r.returncode == 0 and "no validation gave a APl value" in " ".join(r.stderr.split()), r.stderr
    r = cli(tmp_path, "evaluate")
    lines = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "validation gave no APl value" in lines[0] and "another train.best_metric" in lines[0]
    assert "set train.eval_every > 0" not in lines[0]


def test_a_queue_kept_for_a_store_that_is_gone_is_not_sent_out_of_sight(project, tracking_uri):
    """Operations kept for a sqlite store whose folder is gone (the project moved): sync made the folder and a
    fresh store again there, sent everything into it, and said it had sent to the current store."""
    gone = project / "old-place" / "mlflow.db"
    records = [{"run": "pending-1", "op": "create", "payload": {"experiment": "moved", "run_name": "offline"},
                "uri": f"sqlite:///{gone}"},
               {"run": "pending-1", "op": "metrics", "payload": [["m", 1.0, 0, 0]], "uri": f"sqlite:///{gone}"}]
    queue = project / "models/mlflow_pending.jsonl"
    queue.parent.mkdir()
    queue.write_text("".join(json.dumps(r) + "\n" for r in records))
    line = one_line(run_cli("sync"), f"error: {gone}: the MLflow store 2 operations in models/mlflow_pending.jsonl "
                                     "were kept for is gone")
    assert "set their \"uri\"" in line and not gone.parent.exists()
    assert [json.loads(x) for x in queue.read_text().splitlines()] == records
    queue.write_text("".join(json.dumps({**r, "uri": tracking_uri}) + "\n" for r in records))   # retargeted
    r = run_cli("sync")
    assert r.exit_code == 0 and f"sent 2 tracking operations to {tracking_uri}" in " ".join(r.stderr.split())


@pytest.mark.slow
def test_evaluating_into_a_run_deleted_in_mlflow_says_so_and_queues_nothing(project, tracking_uri):
    """The run of models/mlflow_run.json deleted in the MLflow UI: evaluate said MLflow was unreachable and
    kept its data for `fcos-exp sync`, which then dropped it as belonging to a run that no longer exists."""
    import mlflow
    for stage in ("prepare", "train"):
        assert run_cli(stage).exit_code == 0
    run = json.loads((project / "models/mlflow_run.json").read_text())["run_id"]
    mlflow.MlflowClient(tracking_uri).delete_run(run)
    r = run_cli("evaluate")
    assert r.exit_code == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert f"refused the reopen of run {run}" in said and "Current state is deleted" in said
    assert "unreachable" not in said and not (project / "models/mlflow_pending.jsonl").exists()
    assert (project / "metrics/eval.json").is_file()


@pytest.mark.slow
def test_a_sync_while_an_offline_training_goes_on_loses_none_of_its_steps(tmp_path):
    """A training that started while its MLflow server was down keeps its operations under a pending run id;
    the server comes back and `fcos-exp sync` runs while training goes on: the next sync dropped every step
    logged after the first sync, as operations "of a run that no longer exists" (the pending id's create had
    been sent by then)."""
    import mlflow
    from test_reliability_tracking import free_port, start_server, stop_server
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    p = tiny_params(train={"epochs": 3}, tracking={"enabled": True, "experiment": "later", "log_every": 1})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    assert cli(tmp_path, "prepare", env=env).returncode == 0
    pause, release = pause_env(tmp_path, 4)                     # 3 steps an epoch
    train = subprocess.Popen([sys.executable, "-m", "pipeline", "train"], cwd=tmp_path,
                             env={**pause, **{k: v for k, v in env.items() if k != "PYTHONPATH"}},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = None
    try:
        wait_paused(train, release)                              # nothing listened: all kept under pending-...
        server = start_server(tmp_path, port)
        r = cli(tmp_path, "sync", env=env)
        assert r.returncode == 0, r.stderr
        release.touch()
        _, err = train.communicate(timeout=600)
        assert train.returncode == 0, err
        r = cli(tmp_path, "sync", env=env)
        assert r.returncode == 0 and "dropped" not in r.stderr, r.stderr
        client = mlflow.MlflowClient(uri)
        run = json.loads((tmp_path / "models/mlflow_run.json").read_text())["run_id"]
        assert sorted(m.step for m in client.get_metric_history(run, "train/final_loss")) == list(range(1, 10))
        assert sorted(m.step for m in client.get_metric_history(run, "epoch/final_loss")) == [1, 2, 3]
    finally:
        train.kill()
        if server is not None:
            stop_server(server)
