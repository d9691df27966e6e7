"""The callback protocol through which the engine reports progress; `pipeline/` implements it."""
from __future__ import annotations

from dataclasses import dataclass


class StopTraining(Exception):
    """Raised by a callback to end training cleanly (e.g. an Optuna trial that is pruned)."""


@dataclass
class TrainState:
    epoch: int = 0              # current epoch, 0-based
    epochs: int = 0
    step: int = 0               # step inside the epoch
    steps_per_epoch: int = 0
    global_step: int = 0        # steps done since the start of training


class Callback:
    """Override what you need; every hook is a no-op by default."""

    def on_train_start(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState, losses: dict[str, float], lr: float) -> None: ...
    def on_epoch_end(self, state: TrainState, summary: dict[str, float]) -> None: ...
    def on_eval_end(self, state: TrainState, metrics: dict) -> None: ...
    def on_train_end(self, state: TrainState, error: BaseException | None) -> None: ...


class CallbackList(Callback):
    """Calls each callback in order; `on_train_end` reaches every callback even if one of them fails."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    def on_train_start(self, state):
        for c in self.callbacks:
            c.on_train_start(state)

    def on_step_end(self, state, losses, lr):
        for c in self.callbacks:
            c.on_step_end(state, losses, lr)

    def on_epoch_end(self, state, summary):
        for c in self.callbacks:
            c.on_epoch_end(state, summary)

    def on_eval_end(self, state, metrics):
        for c in self.callbacks:
            c.on_eval_end(state, metrics)

    def on_train_end(self, state, error):
        first: BaseException | None = None
        for c in self.callbacks:
            try:
                c.on_train_end(state, error)
            except Exception as e:  # the others must still close their resources
                first = first or e
        if first is not None:
            raise first
