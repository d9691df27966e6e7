"""The MLflow UI shows the spread beside each number: a real `mlflow server` (one worker, on 127.0.0.1, in its
own process group, stopped at the end) over a sqlite store with two runs as evaluate logs them, and the
compare page of the two rendered by headless Chromium (README: "Comparing runs in the MLflow UI")."""
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import mlflow
import pytest
from bootstrap_data import log_run, synthetic
from PIL import Image

from pipeline.detections import SE_METRICS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_text(dom: str) -> list[str]:
    """The visible strings of a DOM dump, in order."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return [html.unescape(t).strip() for t in re.split(r"<[^>]+>", body) if t.strip()]


@pytest.mark.slow
def test_compare_page_shows_the_standard_errors(tmp_path, monkeypatch):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium package)")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("ui", artifact_location=(tmp_path / "artifacts").as_uri())
    gt, _ = synthetic(40, seed=3)
    runs = [client.get_run(log_run(client, exp, name, {"train.lr": lr}, gt,
                                   synthetic(40, seed=3, quality=q, det_seed=9)[1], tmp_path / "dets"))
            for name, lr, q in (("lr-a", 0.002, 0.6), ("lr-b", 0.004, 0.8))]

    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}        # no background job workers (7 processes)
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", "1"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow server did not answer within 180 s"
                time.sleep(0.5)
        ids = urllib.parse.quote(str([r.info.run_id for r in runs]).replace("'", '"'))
        url = f"http://127.0.0.1:{port}/#/compare-runs?runs={ids}&experiments=%5B%22{exp}%22%5D"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--virtual-time-budget=30000",
                 "--window-size=1400,1600", f"--user-data-dir={tmp_path / 'profile'}"]   # both run columns drawn
        dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
        assert dom.returncode == 0, dom.stderr[-500:]
        text = page_text(dom.stdout)
        assert "Comparing 2 Runs from 1 Experiment" in text and "lr-a" in text and "lr-b" in text
        # The Metrics table: every metric name (sorted), then row by row each run's value (3 decimals).
        start = text.index("Metrics", text.index("Parameters"))
        table = text[text.index("Show diff only", start) + 1:text.index("Artifacts", start)]
        names = sorted(runs[0].data.metrics)
        assert table[:len(names)] == names and {"test/AP", "test/AP50"} <= set(names)
        assert {f"test/{k}_se" for k in SE_METRICS} <= set(names)
        values = table[len(names):]
        assert len(values) == 2 * len(names)
        for i, name in enumerate(names):
            for j, run in enumerate(runs):
                assert abs(float(values[2 * i + j]) - run.data.metrics[name]) <= 5e-4 + 1e-12, (name, run.info.run_name)
        shot = tmp_path / "compare.png"
        r = subprocess.run([chromium, *flags, f"--screenshot={shot}", url],
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0 and shot.is_file(), r.stderr[-500:]
        if os.environ.get("MLFLOW_UI_SCREENSHOT"):     # keep it to look at
            shutil.copy(shot, os.environ["MLFLOW_UI_SCREENSHOT"])
        img = Image.open(shot).convert("RGB")
        assert img.size == (1400, 1600) and len(img.getcolors(maxcolors=1 << 20)) > 50
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
