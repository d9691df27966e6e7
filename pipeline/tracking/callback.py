"""`MlflowCallback`: the training loop's progress (fcos.callbacks protocol) into a `Tracker`."""
from __future__ import annotations

from fcos.callbacks import Callback

from .run import Tracker


class MlflowCallback(Callback):
    """Per-step losses and lr (sent in batches every `every` steps and at an epoch's last step, so that a
    checkpoint never holds steps MLflow lacks), per-epoch summaries and validation.

    A resumed training replays the steps (and possibly an epoch's end) between its checkpoint and where it
    stopped, identically; what the run already holds of them is not logged again."""

    def __init__(self, tracker: Tracker, every: int = 20):
        self.tracker, self.every, self.rows = tracker, every, []
        self.logged_step = self.logged_epoch = 0

    def on_train_start(self, state):
        if state.global_step:   # resuming
            self.logged_step = self.tracker.logged_steps("train/final_loss")
            self.logged_epoch = self.tracker.logged_steps("epoch/final_loss")

    def on_step_end(self, state, losses, lr):
        s = state.global_step
        if s > self.logged_step:
            self.rows += [(f"train/{k}", v, s) for k, v in losses.items()] + [("train/lr", lr, s)]
        if s % self.every == 0 or state.step == state.steps_per_epoch - 1:   # an epoch's steps all sent before
            self.flush()                                                       # its checkpoint is written

    def on_epoch_end(self, state, summary):
        self.flush()
        if state.epoch + 1 > self.logged_epoch:
            self.tracker.log_metrics({f"epoch/{k}": v for k, v in summary.items()}, step=state.epoch + 1)

    def on_eval_end(self, state, metrics):
        if state.epoch + 1 > self.logged_epoch:
            self.tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=state.epoch + 1)

    def on_train_end(self, state, error):
        self.flush()

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        self.tracker.log_batch(rows)
