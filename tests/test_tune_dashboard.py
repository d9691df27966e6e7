"""A study of `fcos-exp tune` opens in optuna-dashboard (PyPI, the `test` extra): the real server, started
with the command tune prints, on 127.0.0.1, read back over its HTTP API; on the default journal file and on
an RDB (sqlite) URL."""
import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_cli
from test_tune import write_space

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install -e '.[test]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, limit: float = 60):
    """GET url as JSON, retrying while the server starts."""
    deadline = time.monotonic() + limit
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.parametrize("storage", [None, "sqlite:///study.db"])
def test_study_opens_in_optuna_dashboard(project, storage):
    write_space(project)
    assert run_cli("prepare").exit_code == 0
    r = run_cli("tune", "--trials", "2", *(["--storage", storage] if storage else []))
    assert r.exit_code == 0, r.stderr
    command = next(line.split("look at it: ", 1)[1].split("  |", 1)[0] for line in r.stderr.splitlines()
                   if line.startswith("look at it: "))
    assert command == f"optuna-dashboard {storage or 'experiments/optuna.journal'}"

    program = Path(sys.executable).parent / "optuna-dashboard"   # the script pip installed beside python
    if not program.is_file():
        pytest.skip(f"{program}: no optuna-dashboard command beside this Python")
    port = free_port()
    server = subprocess.Popen([str(program), *shlex.split(command)[1:], "--host", "127.0.0.1", "--port", str(port)],
                              cwd=project,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        studies = get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["fcos-exp"]
        detail = get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    trials = detail["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    assert {t["state"] for t in trials} <= {"Complete", "Pruned"}
    assert {p["name"] for p in trials[1]["params"]} == {"train.lr", "train.epochs"}
    assert trials[0]["user_attrs"] and any(a["key"] == "baseline" for a in trials[0]["user_attrs"])
