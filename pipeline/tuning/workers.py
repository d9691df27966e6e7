"""`fcos-exp tune --workers N`: N worker processes on this machine share the cores (each gets cores // N
torch threads: two 2-thread OpenMP processes on 2 cores run several times slower than one) and one study.
This process relays their lines, forwards stop signals and waits; workers.py holds no trial logic (that is
study.Study.work, which every worker runs)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from . import signals


def cores() -> int:
    """CPU cores this process may run on (taskset and cpusets included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, cores() // workers)


def set_threads(threads: int) -> None:
    """torch's intra-op threads for this process (and OpenMP's for libraries that read the environment)."""
    import torch
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _command(s, params_path: str, parent_run: str | None, index: int, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "pipeline", "tune", "--params", params_path, "--trials", str(s.n_trials),
           "--study-name", s.name, "--threads", str(threads), "--worker-of", parent_run or "-",
           "--worker-index", str(index)]
    return cmd + (["--storage", s.url] if s.url else [])


def run_workers(params_path: str, display, s, parent_run: str | None, workers: int,
                threads: int) -> tuple[str | None, int]:
    """Start `workers` processes of `fcos-exp tune` on study `s`, relay their output line by line, forward
    SIGINT/SIGTERM to them, and wait until all have ended. Returns (the stop signal's name or None, how many
    workers ended in an error)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs: list[subprocess.Popen] = []

    def forward(signum: int) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    def relay(i: int, p: subprocess.Popen) -> None:
        for line in p.stdout:
            display.line(f"[worker {i}] {line.rstrip()}")

    relays = []
    with signals.graceful_stop(on_signal=forward, force=False):
        for i in range(workers):
            p = subprocess.Popen(_command(s, params_path, parent_run, i, threads), env=env, text=True, bufsize=1,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.append(p)
            relays.append(threading.Thread(target=relay, args=(i, p), daemon=True))
            relays[-1].start()
        while any(p.poll() is None for p in procs):
            time.sleep(1)
            display.refresh()
        for r in relays:
            r.join(timeout=5)
        stopped = signals.requested()
    errors = 0
    for i, p in enumerate(procs):
        if p.returncode < 0:
            display.line(f"[worker {i}] killed by {signal.Signals(-p.returncode).name}")
        elif p.returncode not in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM):
            display.line(f"[worker {i}] ended with exit code {p.returncode}")
        errors += p.returncode != 0 and stopped is None
    return (None if stopped is None else signal.Signals(stopped).name), errors
