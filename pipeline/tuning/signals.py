"""Stopping a study cleanly on SIGINT or SIGTERM (Ctrl-C, `kill`, a scheduler's end of job).

The first signal only sets a flag, read at safe points (after a training step, between trials), so a signal
never lands in the middle of a write to the Optuna journal or to MLflow; the running trial then ends as FAIL
and is queued again. A second signal stops at once (KeyboardInterrupt wherever the process is). A repeat
within REPEAT_S is the same stop delivered twice (a terminal or a scheduler signals the whole process group,
and the parent of `--workers` forwards it as well) and is ignored."""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_S = 2.0


class Interrupted(KeyboardInterrupt):
    """Raised at a safe point after a stop signal; a KeyboardInterrupt, so Optuna marks the running trial
    FAIL and re-raises it (an Exception would fail that trial only and the study would go on).
    str() is the signal's name."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[tuple[int, float]] = []


def requested() -> int | None:
    """The signal received, if any."""
    return _received[0][0] if _received else None


def check() -> None:
    """Raise Interrupted when a stop signal has arrived (called at safe points)."""
    if _received:
        raise Interrupted(_received[0][0])


@contextmanager
def graceful_stop(on_signal=None, announce: bool = True, force: bool = True):
    """Within the block, SIGINT/SIGTERM request a stop (`check`); `on_signal(signum)` is called for each
    signal taken (the parent of workers forwards it); `announce` says so on stderr; `force`: a second
    signal raises Interrupted at once. The previous handlers come back afterwards."""
    def handler(signum, frame):
        now = time.monotonic()
        if _received and now - _received[-1][1] < REPEAT_S:
            return
        _received.append((signum, now))
        if on_signal is not None:
            on_signal(signum)
        if len(_received) > 1 and force:
            raise Interrupted(_received[0][0])
        if announce and len(_received) == 1:   # os.write: a handler may run in the middle of a print
            os.write(2, f"{signal.Signals(signum).name}: stopping after the current training step (the running "
                        "trial is queued again); send it again to stop at once\n".encode())

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    _received.clear()
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
