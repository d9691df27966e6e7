"""The tests' pause: a training callback that, after global step STEP, creates FILE.reached and waits until
FILE exists, so a test can kill the run or stop a server at a point it controls, however fast the machine.
Training processes load it through the pipeline's own extension point (FCOS_EXP_CALLBACKS, see
tests/conftest.py: pause_env); the library knows nothing of it."""
from __future__ import annotations

import os
import time
from pathlib import Path

from fcos.callbacks import Callback

ENV = "FCOS_EXP_TEST_PAUSE"   # STEP:FILE


class PauseAtStep(Callback):
    def __init__(self, step: int, release: str | Path):
        self.step, self.release = step, Path(release)

    def on_step_end(self, state, losses, lr):
        if state.global_step != self.step:
            return
        Path(f"{self.release}.reached").touch()
        while not self.release.exists():
            time.sleep(0.05)


def from_env() -> PauseAtStep:
    step, _, release = os.environ[ENV].partition(":")
    return PauseAtStep(int(step), release)
