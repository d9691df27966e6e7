"""One trial of the study: sample the space, train on the train split (or the study's share of it,
tune.train_fraction) validating every epoch on the val split (never the test split), report to the pruner;
tracked as a nested MLflow run.

A trial reports its value at step = the percent of its own schedule done (epoch 2 of 6 -> 33), so the
pruner compares trials at the same point of their cosine schedules: at equal epoch numbers a 2-epoch trial,
its learning rate already annealed, would always beat a 6-epoch one half-way, and pruning would select short
training for its early value rather than its final one."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from fcos.callbacks import Callback, StopTraining

from ..errors import UserError
from ..params import device_of
from ..tracking import Tracker
from ..training import train
from . import signals
from .space import apply_values, suggest
from .storage import mark_worker, requeue

COUNTED = ("COMPLETE", "PRUNED", "RUNNING")   # states that use up a place among --trials


def schedule_percent(epoch: int, epochs: int) -> int:
    """The pruner's step after `epoch` (1-based) of `epochs`."""
    return round(100 * epoch / epochs)


class _Report(Callback):
    """Each epoch's validation metrics to MLflow, the trial and the display; stops training when the pruner
    says so (never the baseline trial: it records its values for the pruner but always runs to the end)
    and at the first step after a stop signal."""

    def __init__(self, trial, tracker: Tracker, metric: str, display, baseline: bool):
        self.trial, self.tracker, self.metric, self.display, self.baseline = trial, tracker, metric, display, baseline
        self.value, self.t0 = None, time.perf_counter()

    def on_step_end(self, state, losses, lr):
        signals.check()

    def on_eval_end(self, state, metrics):
        self.value = metrics[self.metric] or 0.0
        self.tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=state.epoch + 1)
        self.trial.report(self.value, schedule_percent(state.epoch + 1, state.epochs))
        self.display.epoch(self.trial.number, state.epoch + 1, state.epochs, self.value, time.perf_counter() - self.t0)
        self.t0 = time.perf_counter()
        last = state.epoch + 1 == state.epochs
        if not last and self.trial.should_prune() and not self.baseline:
            raise StopTraining


class Objective:
    """`study.optimize(Objective(...), n_trials=1)`: returns the last validation value of the trial's
    metric; a pruned trial raises optuna.TrialPruned, bad input stops the study (UserError), a stop signal
    fails the trial and queues it again (signals.Interrupted), any other failure (a NaN loss) fails this
    trial only (NaN) and the study goes on.

    `started()` runs first, once the trial exists (it releases the study lock, study.py); with an RDB
    storage, which has no such lock, a trial started when the study already had `n_trials` is given up."""

    def __init__(self, params: dict, space: dict, study, parent_run: str | None, display, n_trials: int):
        self.params, self.space, self.study, self.parent, self.display = params, space, study, parent_run, display
        self.metric, self.n_trials, self.started = params["tune"]["metric"], n_trials, lambda: None

    def __call__(self, trial) -> float:
        import optuna
        self.started()
        mark_worker(self.study, trial)
        if self._surplus(trial):
            trial.set_user_attr("surplus", True)
            self.display.line(f"trial {trial.number} given up: another worker started the study's last trial")
            return float("nan")
        values = suggest(trial, self.space)
        baseline = bool(trial.user_attrs.get("baseline"))
        tags = {"optuna_trial": str(trial.number), "optuna_study": self.study.study_name, "fcos_role": "trial",
                "fcos_baseline": str(baseline).lower()}
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        with Tracker(self.params, True, name=f"trial-{trial.number}", tags=tags, remember=False) as tracker:
            if tracker.run_id:
                trial.set_user_attr("mlflow_run_id", tracker.run_id)
            tracker.log_params(values)
            report = _Report(trial, tracker, self.metric, self.display, baseline)
            try:
                signals.check()
                result = self._train(apply_values(self.params, values), report)
            except signals.Interrupted as e:
                tracker.set_tags({"optuna_state": "FAIL", "stopped_by": str(e)})
                tracker.status = "KILLED"
                requeue(self.study, trial)
                self.display.line(f"trial {trial.number} stopped by {e}: marked FAIL, its params queued again")
                raise
            except UserError:
                tracker.set_tags({"optuna_state": "FAIL"})
                tracker.status = "FAILED"
                raise
            except Exception as e:   # e.g. a NaN loss: this trial fails, the study goes on
                self.display.line(f"trial {trial.number} failed: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else ''}")
                tracker.set_tags({"optuna_state": "FAIL"})
                tracker.status = "FAILED"
                return float("nan")
            if result["stopped_by"] == "callback":   # pruned (train.patience ends a trial as complete)
                tracker.set_tags({"optuna_state": "PRUNED"})
                raise optuna.TrialPruned()
            tracker.set_tags({"optuna_state": "COMPLETE"})
            tracker.log_metrics({"objective": report.value})
            return report.value

    def _surplus(self, trial) -> bool:
        before = [t for t in self.study.get_trials(deepcopy=False)
                  if t.number < trial.number and t.state.name in COUNTED]
        return len(before) >= self.n_trials

    def _train(self, params: dict, report: _Report) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            return train(params, Path(tmp) / "trial.pt", [report], device_of(params), eval_every=1,
                         train_fraction=params["tune"]["train_fraction"])
