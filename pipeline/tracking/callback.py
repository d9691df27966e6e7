"""`MlflowCallback`: the training loop's progress (fcos.callbacks protocol) into a `Tracker`."""
from __future__ import annotations

from fcos.callbacks import Callback

from .run import Tracker


class MlflowCallback(Callback):
    """Per-step losses and lr (sent in batches every `every` steps), per-epoch summaries and validation."""

    def __init__(self, tracker: Tracker, every: int = 20):
        self.tracker, self.every, self.rows = tracker, every, []

    def on_step_end(self, state, losses, lr):
        s = state.global_step
        self.rows += [(f"train/{k}", v, s) for k, v in losses.items()] + [("train/lr", lr, s)]
        if s % self.every == 0:
            self.flush()

    def on_epoch_end(self, state, summary):
        self.flush()
        self.tracker.log_metrics({f"epoch/{k}": v for k, v in summary.items()}, step=state.epoch + 1)

    def on_eval_end(self, state, metrics):
        self.tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=state.epoch + 1)

    def on_train_end(self, state, error):
        self.flush()

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        self.tracker.log_batch(rows)
