"""Rich progress for long work (training: loss, images/s, and a results line per epoch); on stderr."""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fcos.callbacks import Callback
from fcos.loss import LOSS_NAMES


def stderr_console() -> Console:
    return Console(stderr=True, soft_wrap=True)   # honours NO_COLOR; long lines are not cut when piped


def bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


class ProgressCallback(Callback):
    """A bar per epoch with the running loss and images/s; one results line per epoch."""

    def __init__(self, console: Console, batch_size: int):
        self.console, self.batch_size = console, batch_size
        self.progress, self.task, self.t0 = None, None, 0.0

    def on_train_start(self, state):
        self.progress = bar(self.console)
        self.progress.start()
        self.t0 = time.perf_counter()

    def _new_task(self, state):
        self.task = self.progress.add_task(f"epoch {state.epoch + 1}/{state.epochs}",
                                           total=state.steps_per_epoch, info="")

    def on_step_end(self, state, losses, lr):
        if self.task is None or state.step == 0:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self._new_task(state)
        ips = (state.step + 1) * self.batch_size / max(1e-9, time.perf_counter() - self.t0)
        self.progress.update(self.task, completed=state.step + 1,
                             info=f"loss {losses['final_loss']:.3f} lr {lr:.2e} {ips:.1f} img/s")

    def on_epoch_end(self, state, summary):
        self.t0 = time.perf_counter()   # steps can arrive in batches (CUDA): time from the epoch's start
        losses = "  ".join(f"{k} {summary[k]:.4f}" for k in LOSS_NAMES if k in summary)
        val = f"  val AP50 {summary['val_AP50']:.3f}" if summary.get("val_AP50") is not None else ""
        self.console.print(f"epoch {state.epoch + 1:>3}/{state.epochs}  {losses}{val}  "
                           f"{summary['images_per_second']:.1f} img/s  {summary['seconds']:.0f} s")

    def on_train_end(self, state, error):
        if self.progress is not None:
            self.progress.stop()

