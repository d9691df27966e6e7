"""One trial of the study: sample the space, train on the train split validating every epoch on the val
split (never the test split) with the value reported to the pruner; tracked as a nested MLflow run."""
from __future__ import annotations

import tempfile
from pathlib import Path

from fcos.callbacks import Callback, StopTraining

from ..errors import UserError
from ..params import device_of
from ..tracking import Tracker
from ..training import train
from .space import apply_values, suggest
from .storage import mark_worker


class _Report(Callback):
    """Sends each epoch's validation metrics to MLflow and the trial; stops training when the pruner says so."""

    def __init__(self, trial, tracker: Tracker, metric: str):
        self.trial, self.tracker, self.metric, self.value = trial, tracker, metric, None

    def on_eval_end(self, state, metrics):
        self.value = metrics[self.metric] or 0.0
        self.tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=state.epoch + 1)
        self.trial.report(self.value, state.epoch + 1)
        if self.trial.should_prune():
            raise StopTraining


class Objective:
    """`study.optimize(Objective(...))`: returns the last validation value of the trial's metric; a pruned
    trial raises optuna.TrialPruned, bad input stops the study (UserError), any other failure (a NaN loss)
    fails this trial only (NaN) and the study goes on."""

    def __init__(self, params: dict, space: dict, study, parent_run: str | None, console):
        self.params, self.space, self.study, self.parent, self.console = params, space, study, parent_run, console
        self.metric = params["tune"]["metric"]

    def __call__(self, trial) -> float:
        import optuna
        mark_worker(self.study, trial)
        values = suggest(trial, self.space)
        tags = {"optuna_trial": str(trial.number), "optuna_study": self.study.study_name, "fcos_role": "trial"}
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        with Tracker(self.params, True, name=f"trial-{trial.number}", tags=tags, remember=False) as tracker:
            tracker.log_params(values)
            report = _Report(trial, tracker, self.metric)
            try:
                result = self._train(apply_values(self.params, values), report)
            except UserError:
                tracker.set_tags({"optuna_state": "FAIL"})
                tracker.status = "FAILED"
                raise
            except Exception as e:   # e.g. a NaN loss: this trial fails, the study goes on
                self.console.print(f"trial {trial.number} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                tracker.set_tags({"optuna_state": "FAIL"})
                tracker.status = "FAILED"
                return float("nan")
            if result["stopped_by"] == "callback":   # pruned (train.patience ends a trial as complete)
                tracker.set_tags({"optuna_state": "PRUNED"})
                raise optuna.TrialPruned()
            tracker.set_tags({"optuna_state": "COMPLETE"})
            tracker.log_metrics({"objective": report.value})
            return report.value

    @staticmethod
    def _train(params: dict, report: _Report) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            return train(params, Path(tmp) / "trial.pt", [report], device_of(params), eval_every=1)
