"""What a study shows while it runs: on a terminal a live table of trials; anywhere else (a log file, nohup,
sbatch, CI, tee) one plain line per finished epoch and per finished trial, flushed at once; and the final
table and summary either way."""
from __future__ import annotations

import threading

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .space import short_params


def trial_seconds(t) -> float | None:
    return (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start \
        else None


def minutes(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def progress(t, epochs_default: int) -> str:
    """'epoch e/E' of a trial from its last report (steps are percent of its schedule, objective.py)."""
    if t.last_step is None:
        return ""
    epochs = int(t.params.get("train.epochs", epochs_default))
    return f"epoch {round(t.last_step * epochs / 100)}/{epochs}"


def best_of(study):
    """The best COMPLETE trial, or None."""
    from optuna.trial import TrialState
    if len(study.directions) > 1 or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def baseline_of(study):
    """The last finished trial of the current params (the enqueued baseline or its retry), or None."""
    done = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline") and t.state.is_finished()]
    return done[-1] if done else None


def trials_table(study, epochs_default: int, last: int | None = 25) -> Table:
    table = Table(title=f"study {study.study_name}")
    for col in ("trial", "params", "value", "state", "seconds"):
        table.add_column(col)
    trials = study.get_trials(deepcopy=False)
    for t in trials[-last:] if last else trials:
        secs = trial_seconds(t)
        state = t.state.name
        if state in ("RUNNING", "PRUNED"):
            state = f"{state} {progress(t, epochs_default)}".strip()
        if t.user_attrs.get("baseline"):
            state += " (defaults)"
        if "retry_of" in t.user_attrs:
            state += f" (retry of {t.user_attrs['retry_of']})"
        value = t.value if t.value is not None else t.intermediate_values.get(t.last_step) if t.last_step else None
        params = t.params or t.system_attrs.get("fixed_params", {})   # a queued trial: the params it will run
        table.add_row(str(t.number), short_params(params), "-" if value is None else f"{value:.4f}", state,
                      "-" if secs is None else f"{secs:.0f}")
    return table


class Display:
    """Plain lines (no terminal); `live()` gives the terminal's live table instead. Methods are called by the
    objective (epoch), Optuna's callbacks (trial) and the worker relay (line), from any thread."""

    def __init__(self, console: Console, metric: str, epochs_default: int, prefix: str = ""):
        self.console, self.metric, self.epochs_default, self.prefix = console, metric, epochs_default, prefix
        self.study, self.live, self.lock = None, None, threading.Lock()

    @staticmethod
    def for_console(console: Console, metric: str, epochs_default: int, prefix: str = "") -> Display:
        kind = LiveDisplay if console.is_terminal else Display
        return kind(console, metric, epochs_default, prefix)

    def line(self, text: str) -> None:
        self.console.print(f"{self.prefix}{text}", markup=False, highlight=False, soft_wrap=True)

    def start(self, study) -> None:
        self.study = study

    def refresh(self) -> None: ...

    def stop(self) -> None: ...

    def epoch(self, trial_number: int, epoch: int, epochs: int, value: float | None, seconds: float) -> None:
        shown = "-" if value is None else f"{value:.4f}"
        self.line(f"trial {trial_number} epoch {epoch}/{epochs}: val {self.metric} {shown} ({seconds:.0f} s)")

    def trial(self, study, t) -> None:
        """An Optuna callback: the trial `t` just finished."""
        value = "-" if t.value is None else f"{t.value:.4f}"
        state = t.state.name + (f" at {progress(t, self.epochs_default)}" if t.state.name == "PRUNED" else "")
        secs = trial_seconds(t)
        best = best_of(study)
        shown_best = "none yet" if best is None else f"trial {best.number} {best.value:.4f}"
        self.line(f"trial {t.number} {state}: {self.metric} {value} | {short_params(t.params)} | "
                  f"{'-' if secs is None else f'{secs:.0f}'} s | best {shown_best}")


class LiveDisplay(Display):
    """The live table on a terminal, redrawn on every epoch and trial; other lines print above it."""

    def start(self, study) -> None:
        super().start(study)
        self.live = Live(trials_table(study, self.epochs_default), console=self.console, refresh_per_second=1,
                         transient=True)   # the summary prints the whole table at the end
        self.live.start()

    def refresh(self) -> None:
        with self.lock:
            if self.live is not None:
                self.live.update(trials_table(self.study, self.epochs_default))

    def stop(self) -> None:
        if self.live is not None:
            self.refresh()
            self.live.stop()
            self.live = None

    def epoch(self, trial_number, epoch, epochs, value, seconds) -> None:
        self.refresh()

    def trial(self, study, t) -> None:
        self.refresh()


def summary(display: Display, study, result: dict, wall: float) -> None:
    """The final table (every trial) and what to do next; also printed after a stop signal."""
    c = display.console
    c.print(trials_table(study, display.epochs_default, last=None))
    counts = ", ".join(f"{n} {s}" for s, n in result["states"].items() if n)
    display.line(f"study '{study.study_name}' ({result['storage']}): {counts or 'no trials'}; "
                 f"this run's wall time {minutes(wall)}")
    best, base = best_of(study), baseline_of(study)
    if best is not None:
        display.line(f"best trial {best.number}: {display.metric} {best.value:.4f} with {short_params(best.params)}"
                     + (f"; the current params (trial {base.number}): "
                        f"{'-' if base.value is None else f'{base.value:.4f}'}" if base is not None else ""))
        if result.get("best_file"):
            display.line(f"written to {result['best_file']}: `fcos-exp tune --apply` puts it into params.yaml, "
                         "then `dvc repro` trains it on the whole training split")
    else:
        display.line("no trial completed yet")
    if result.get("interrupted"):
        display.line(f"stopped by {result['interrupted']}: {result['done']} of {result['wanted']} trials done; "
                     "run the same command again to continue the study")
    display.line(f"look at it: {result['dashboard']}  |  MLflow: mlflow ui --backend-store-uri {result['mlflow']}")
