"""Running a tuning study: workers, MLflow parent and nested runs, the live table, figures, best params."""
from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import yaml
from rich.live import Live
from rich.table import Table

from .errors import UserError
from .tracking import _experiment_id, tracking_uri
from .tune import BEST_FILE, load_space, make_pruner, retry_dead_local_trials, run_trial, storage_for, suggest


class StudyRuns:
    """The MLflow parent run of a study (found again by its tag, shared by workers) and its nested trial runs."""

    def __init__(self, params: dict, study_name: str):
        self.enabled = params["tracking"]["enabled"]
        if not self.enabled:
            return
        from mlflow import MlflowClient
        self.client = MlflowClient(tracking_uri())
        self.exp_id = _experiment_id(self.client, params["tracking"]["experiment"])
        found = self.client.search_runs([self.exp_id], f"tags.optuna_study = '{study_name}' and tags.fcos_role = 'study'")
        self.parent = found[0].info.run_id if found else self.client.create_run(
            self.exp_id, run_name=f"tune-{study_name}", tags={"optuna_study": study_name, "fcos_role": "study"}).info.run_id

    def trial_run(self, number: int, values: dict) -> str | None:
        if not self.enabled:
            return None
        from mlflow.entities import Param
        run = self.client.create_run(self.exp_id, run_name=f"trial-{number}",
                                     tags={"mlflow.parentRunId": self.parent, "optuna_trial": str(number)})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in values.items()])
        return run.info.run_id

    def epoch(self, run_id: str | None, epoch: int, metrics: dict) -> None:
        if run_id:
            for k, v in metrics.items():
                if isinstance(v, float):
                    self.client.log_metric(run_id, f"val/{k}", v, step=epoch)

    def finish(self, run_id: str | None, state: str, value: float | None) -> None:
        if run_id:
            self.client.set_tag(run_id, "optuna_state", state)
            if value is not None:
                self.client.log_metric(run_id, "objective", value)
            self.client.set_terminated(run_id, "FINISHED" if state != "FAIL" else "FAILED")

    def summary(self, study, metric: str) -> None:
        if not self.enabled:
            return
        figures = study_figures(study)
        for path in figures:
            self.client.log_artifact(self.parent, str(path), "optuna")
        best = _best(study)
        if best is not None:
            self.client.log_metric(self.parent, f"best_{metric}", best.value)
            for k, v in best.params.items():
                self.client.set_tag(self.parent, f"best.{k}", str(v))


def _best(study):
    from optuna.trial import TrialState
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return study.best_trial if done else None


def study_figures(study) -> list[Path]:
    """Optimisation history, parameter importances (needs 2 complete trials) and intermediate values as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    import warnings

    out = Path(tempfile.mkdtemp())
    paths = []
    for name, fn in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances),
                     ("intermediate", ovm.plot_intermediate_values)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
        except Exception:   # too few trials for this figure (e.g. importances with < 2 complete ones)
            continue
        fig = (ax if hasattr(ax, "figure") else ax.flat[0]).figure
        fig.set_size_inches(7, 4)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        paths.append(out / f"{name}.png")
    return paths


def trials_table(study) -> Table:
    table = Table(title=f"study {study.study_name}")
    for col in ("trial", "params", "value", "state", "seconds"):
        table.add_column(col)
    for t in study.get_trials(deepcopy=False)[-25:]:
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        params = ", ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                           for k, v in t.params.items())
        table.add_row(str(t.number), params, "-" if t.value is None else f"{t.value:.4f}", t.state.name,
                      "-" if secs is None else f"{secs:.0f}")
    return table


def write_best(study, metric: str) -> Path | None:
    best = _best(study)
    if best is None:
        return None
    BEST_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = BEST_FILE.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"study": study.study_name, "trial": best.number, "metric": metric,
                                   "value": float(best.value), "params": dict(best.params)}, sort_keys=False))
    os.replace(tmp, BEST_FILE)
    return BEST_FILE


def apply_best(params_path: Path) -> dict:
    """Write the best params into params.yaml in place, keeping its comments and layout."""
    if not BEST_FILE.is_file():
        raise UserError(f"{BEST_FILE}: not found; run `fcos-exp tune` first")
    best = yaml.safe_load(BEST_FILE.read_text())["params"]
    lines = Path(params_path).read_text().splitlines(keepends=True)
    for key, value in best.items():
        section, _, name = key.partition(".")
        lines = _set_value(lines, section, name, value, params_path)
    tmp = Path(params_path).with_suffix(".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, params_path)
    return best


def _set_value(lines: list[str], section: str, name: str, value, path) -> list[str]:
    inside = False
    for i, line in enumerate(lines):
        if not line.startswith((" ", "\t", "#")) and line.strip():
            inside = line.split(":")[0].strip() == section
        elif inside and line.strip().startswith(f"{name}:") and line.startswith("  ") and not line.startswith("   "):
            rest = line.split(":", 1)[1]
            comment = rest[rest.index("#"):].rstrip("\n") if "#" in rest else ""
            text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            new = f"  {name}: {text}"
            lines[i] = (f"{new:<27} {comment}" if comment else new) + "\n"
            return lines
    raise UserError(f"{path}: {section}.{name} not found to apply")


def run_study(params: dict, console, trials: int | None, storage: str | None, study_name: str | None) -> dict:
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from fcos.callbacks import StopTraining

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t = params["tune"]
    space = load_space(t["space"], params)
    n_trials = trials or t["trials"]
    name = study_name or t["study_name"]
    max_epochs = int(space.get("train.epochs", {}).get("high", params["train"]["epochs"]))
    study = optuna.create_study(storage=storage_for(storage or t["storage"], t["heartbeat_seconds"]),
                                sampler=optuna.samplers.TPESampler(seed=t["seed"]),
                                pruner=make_pruner(t["pruner"], max_epochs), study_name=name,
                                direction=t["direction"], load_if_exists=True)
    retried = retry_dead_local_trials(study)
    if retried:
        console.print(f"{retried} trial(s) of a worker that died were marked failed and queued again")
    runs = StudyRuns(params, name)
    counted = (TrialState.COMPLETE, TrialState.PRUNED)

    def objective(trial):
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        study._storage.set_trial_system_attr(trial._trial_id, "fcos_host", socket.gethostname())
        study._storage.set_trial_system_attr(trial._trial_id, "fcos_pid", os.getpid())
        values = suggest(trial, space)
        run_id = runs.trial_run(trial.number, values)

        def report(epoch, value, metrics):
            runs.epoch(run_id, epoch, metrics)
            trial.report(value, epoch)
            if trial.should_prune():
                raise StopTraining

        try:
            value = run_trial(params, values, t["metric"], report)
        except StopTraining:
            runs.finish(run_id, "PRUNED", None)
            raise optuna.TrialPruned() from None
        except UserError:
            runs.finish(run_id, "FAIL", None)
            raise                                   # bad input stops the study with its one-line message
        except Exception as e:                      # e.g. a NaN loss: this trial fails, the study goes on
            console.print(f"trial {trial.number} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            runs.finish(run_id, "FAIL", None)
            return float("nan")
        runs.finish(run_id, "COMPLETE", value)
        return value

    start = time.perf_counter()
    with Live(trials_table(study), console=console, refresh_per_second=1, transient=False) as live:
        remaining = n_trials - len(study.get_trials(deepcopy=False, states=counted))
        if remaining > 0:   # failed trials do not count; at most 3x as many attempts as trials wanted
            study.optimize(objective, n_trials=3 * remaining,
                           callbacks=[MaxTrialsCallback(n_trials, states=counted),
                                      lambda s, tr: live.update(trials_table(s))])
        live.update(trials_table(study))
    best_file = write_best(study, t["metric"])
    runs.summary(study, t["metric"])
    best = _best(study)
    states = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    if best is not None:
        console.print(f"best trial {best.number}: {t['metric']} {best.value:.4f} with {best.params}; "
                      f"written to {best_file} (`fcos-exp tune --apply` puts it in params.yaml)")
    else:
        console.print("no trial completed yet")
    console.print(f"study '{name}': {states}; {time.perf_counter() - start:.0f} s; MLflow {tracking_uri()}")
    return {"best": None if best is None else {"value": best.value, "params": best.params}, "states": states}
