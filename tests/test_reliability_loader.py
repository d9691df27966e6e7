"""Data loader workers hit by the machine (issue 31's faults): a worker killed mid-epoch (the out-of-memory
killer, here a real SIGKILL), killed while handing over a batch, and a full /dev/shm: each one line naming the
machine's problem, never "a bug in fcos-exp", and the training resumable."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import pause_env, tiny_params, wait_paused
from test_reliability_round4 import cli

pytestmark = pytest.mark.timeout(900)   # a hang guard


def children(pid: int) -> list[int]:
    """The process's children (Linux /proc)."""
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


@pytest.mark.parametrize("error", [ConnectionResetError(104, "Connection reset by peer"),
                                   ConnectionRefusedError(111, "Connection refused"),
                                   FileNotFoundError(2, "No such file or directory", "/tmp/pymp-x/listener-y")])
def test_a_loader_worker_killed_while_handing_over_a_batch_is_the_same_one_line(capsys, error):
    """A worker killed while the loop receives its batch (the loop connects to the dead worker's socket for
    the batch's shared memory before torch sees the worker gone) is an OSError out of torch's _try_get_data,
    which the CLI showed as "[Errno 104] Connection reset by peer"."""
    import torch
    import typer

    from pipeline.cli import _user_errors

    class Reset:   # the receiving end of that handover
        def get(self, timeout=None):
            raise error

    batches = iter(torch.utils.data.DataLoader(range(8), num_workers=1))
    batches._data_queue = Reset()
    try:
        with pytest.raises(typer.Exit) as e, _user_errors():
            next(batches)
    finally:
        batches._shutdown_workers()
    err = capsys.readouterr().err
    assert e.value.exit_code == 2 and err.count("\n") == 1
    assert "a data loader worker process died (out of memory?" in err and error.strerror in err


@pytest.mark.slow
def test_a_killed_loader_worker_is_one_line_and_training_resumes(tmp_path):
    """The kernel's out-of-memory killer takes a loader worker mid-epoch (here a real SIGKILL): torch's
    RuntimeError, raised by its SIGCHLD handler, used to be reported as a bug in fcos-exp."""
    p = tiny_params(train={"epochs": 2}, data={**tiny_params()["data"], "num_workers": 2})
    p["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert cli(tmp_path, "prepare").returncode == 0
    env, release = pause_env(tmp_path, 4)                     # 3 steps an epoch: epoch 2's first step
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_paused(proc, release)
        workers = children(proc.pid)
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        release.touch()
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    lines = [line for line in err.splitlines() if line.strip().startswith("error")]
    assert proc.returncode == 2 and len(lines) == 1, err
    assert "a data loader worker process died (out of memory?" in lines[0] and "internal error" not in err
    import torch
    assert torch.load(tmp_path / "models/model.pt", weights_only=True)["epoch"] == 1
    r = cli(tmp_path, "train", "--resume")
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "models/model.pt", weights_only=True)["epoch"] == 2


def test_a_full_dev_shm_under_loader_workers_is_one_line(tmp_path):
    """Loader workers hand batches over in /dev/shm; a container's is 64 MB by default. Here a real full one
    (a 256 KB tmpfs on /dev/shm in a mount namespace of this command only): torch's RuntimeError from the
    worker was reported as a bug in fcos-exp."""
    p = tiny_params(data={**tiny_params()["data"], "num_workers": 2})
    p["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert cli(tmp_path, "prepare").returncode == 0
    script = f"mount -t tmpfs -o size=256k tmpfs /dev/shm && exec {sys.executable} -m pipeline train"
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    if r.returncode and "pipeline" not in r.stderr and "error" not in r.stderr:
        pytest.skip(f"no private mount namespace here ({r.stderr.strip()[:100]})")
    lines = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "No space left on device" in lines[0] and "/dev/shm, where loader workers hand over batches, is full" \
        in lines[0] and "internal error" not in lines[0]
