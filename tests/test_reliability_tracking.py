"""The MLflow tracking server stops in the middle of a run: training finishes, the user is told, nothing is
lost (kept in models/mlflow_pending.jsonl) and `fcos-exp sync` sends it once the server is back."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
import yaml
from conftest import pause_env, tiny_params, wait_paused


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path, port):
    p = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                          "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                          "--artifacts-destination", str(tmp_path / "artifacts")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600                         # a hang guard, not a speed assumption
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback: never through a proxy
    while p.poll() is None and time.monotonic() < deadline:
        try:
            direct.open(f"http://127.0.0.1:{port}/health", timeout=2)
            return p
        except OSError:
            time.sleep(0.5)
    stop_server(p)
    pytest.skip(f"mlflow server did not start (exit code {p.returncode})")


def stop_server(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=30)


def cli(project, *args, env):
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_server_outage_mid_training_loses_nothing(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(train={"epochs": 20}), sort_keys=False))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    assert cli(project, "prepare", env=env).wait() == 0
    server = start_server(tmp_path, port)
    try:
        pause, release = pause_env(tmp_path, 12)
        train = cli(project, "train", env={**pause, **env})   # env last: its tracking URI wins
        wait_paused(train, release)
        stop_server(server)                                    # the outage, mid-training (after step 12)
        release.touch()
        out, err = train.communicate(timeout=300)
        assert train.returncode == 0, err[-2000:]
        assert "unreachable" in err and "fcos-exp sync" in err
        pending = project / "models/mlflow_pending.jsonl"
        assert pending.is_file() and json.loads((project / "metrics/train.json").read_text())["steps"] == 60

        server = start_server(tmp_path, port)                  # back again
        sync = cli(project, "sync", env=env)
        _, err = sync.communicate(timeout=120)
        assert sync.returncode == 0, err
        assert not pending.exists()
        run_id = json.loads((project / "models/mlflow_run.json").read_text())["run_id"]
        client = mlflow.MlflowClient(uri)
        history = client.get_metric_history(run_id, "train/final_loss")
        assert sorted(m.step for m in history) == list(range(1, 61))   # every step, none lost
        assert client.get_run(run_id).info.status == "FINISHED"
        (model,) = client.get_run(run_id).outputs.model_outputs   # the checkpoint, logged as the run's model
        assert "model.pt" in {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    finally:
        stop_server(server)
