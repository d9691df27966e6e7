"""plots/train_steps.csv, the per-step curves `dvc plots` draws: step, epoch, lr and every loss."""
from __future__ import annotations

import csv
from pathlib import Path

from fcos.callbacks import Callback
from fcos.files import atomic_write
from fcos.loss import LOSS_NAMES

COLUMNS = ["step", "epoch", "lr", *LOSS_NAMES]


class StepLog(Callback):
    """Appends a row per step. On resume the rows up to the checkpoint's step are kept (rows past it, from a
    run killed between checkpoints, are dropped) so the file matches a run never stopped; nothing is
    truncated before the kept rows are safely rewritten."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = Path(path)
        if resume_step and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        else:
            rows = []
        with atomic_write(self.path) as f:
            writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, COLUMNS)

    def on_step_end(self, state, losses, lr):
        self.writer.writerow({"step": state.global_step, "epoch": state.epoch + 1, "lr": f"{lr:.6g}",
                              **{k: f"{losses[k]:.6g}" for k in LOSS_NAMES}})

    def on_epoch_end(self, state, summary):
        self.file.flush()

    def on_train_end(self, state, error):
        self.file.close()

