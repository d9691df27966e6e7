"""Running a study: workers on one shared storage, the MLflow parent run, the live table, the figures and the
best params (experiments/best_params.yaml, `--apply` writes them into params.yaml)."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import yaml
from rich.live import Live
from rich.table import Table

from ..artifacts import write_text
from ..errors import UserError
from ..params import set_values
from ..tracking import Tracker, find_run, tracking_uri
from .objective import Objective
from .space import load_space
from .storage import DEFAULT_JOURNAL, retry_dead_local_trials, shown_url, storage_for

BEST_FILE = Path("experiments/best_params.yaml")
FIGURES = Path("outputs/tuning")   # <study name>/tuning_*.png, also logged to the study's MLflow run


def best_trial(study):
    """The best complete trial, or None."""
    from optuna.trial import TrialState
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete and len(study.directions) == 1 else None


def study_figures(study, out: Path) -> list[Path]:
    """out/tuning_{history,importances,intermediate}.png: optimisation history (>= 1 complete trial),
    parameter importances (>= 2), intermediate values (any reported)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    intermediate = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    wanted = [("history", ovm.plot_optimization_history, complete >= 1),
              ("importances", ovm.plot_param_importances, complete >= 2),
              ("intermediate", ovm.plot_intermediate_values, intermediate)]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, plot, possible in wanted:
        if not possible or len(study.directions) > 1:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")     # the matplotlib backend is "experimental"
                ax = plot(study)
        except Exception:   # e.g. importances of a parameter that never varied
            continue
        fig = (ax if hasattr(ax, "figure") else ax.flat[0]).figure
        fig.set_size_inches(6.4, 3.8)
        fig.tight_layout()
        path = out / f"tuning_{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def trials_table(study) -> Table:
    table = Table(title=f"study {study.study_name}")
    for col in ("trial", "params", "value", "state", "seconds"):
        table.add_column(col)
    for t in study.get_trials(deepcopy=False)[-25:]:
        done = t.datetime_complete and t.datetime_start
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if done else None
        params = ", ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                           for k, v in t.params.items())
        table.add_row(str(t.number), params, "-" if t.value is None else f"{t.value:.4f}", t.state.name,
                      "-" if secs is None else f"{secs:.0f}")
    return table


def write_best(study, metric: str) -> Path | None:
    best = best_trial(study)
    if best is None:
        return None
    write_text(BEST_FILE, yaml.safe_dump({"study": study.study_name, "trial": best.number, "metric": metric,
                                          "value": float(best.value), "params": dict(best.params)}, sort_keys=False))
    return BEST_FILE


def apply_best(params_path: Path) -> dict:
    """Write the best params into params.yaml in place, keeping its comments and layout."""
    if not BEST_FILE.is_file():
        raise UserError(f"{BEST_FILE}: not found; run `fcos-exp tune` first")
    best = yaml.safe_load(BEST_FILE.read_text())["params"]
    set_values(params_path, best)
    return best


def run_study(params: dict, console, trials: int | None, storage: str | None, study_name: str | None) -> dict:
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t = params["tune"]
    space = load_space(t["space"], params)
    n_trials = t["trials"] if trials is None else trials
    name = study_name or t["study_name"]
    max_epochs = int(space.get("train.epochs", {}).get("high", params["train"]["epochs"]))
    pruner = {"hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, max_epochs)),
              "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
              "none": optuna.pruners.NopPruner}[t["pruner"]]()
    url = storage or t["storage"]
    backend = storage_for(url, t["heartbeat_seconds"])
    try:
        study = optuna.create_study(storage=backend, sampler=optuna.samplers.TPESampler(seed=t["seed"]),
                                    pruner=pruner, study_name=name, direction=t["direction"], load_if_exists=True)
    except (ValueError, KeyError, TypeError) as e:   # a journal file that is not one, a study of another direction
        raise UserError(f"{shown_url(url or str(DEFAULT_JOURNAL))}: not a usable Optuna storage for study "
                        f"'{name}' ({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})") from None
    retried = retry_dead_local_trials(study)
    if retried:
        console.print(f"{retried} trial(s) of a worker that died were marked failed and queued again")
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    tags = {"optuna_study": name, "fcos_role": "study"}
    parent_id = find_run(params, tags)   # workers of one study share its parent run
    start = time.perf_counter()
    with Tracker(params, parent_id is None, run_id=parent_id, name=f"tune-{name}", tags=tags,
                 remember=False) as parent:
        with Live(trials_table(study), console=console, refresh_per_second=1, transient=False) as live:
            remaining = n_trials - len(study.get_trials(deepcopy=False, states=counted))
            if remaining > 0:   # failed trials do not count; at most 3x as many attempts as trials wanted
                study.optimize(Objective(params, space, study, parent.run_id, console), n_trials=3 * remaining,
                               callbacks=[MaxTrialsCallback(n_trials, states=counted),
                                          lambda s, tr: live.update(trials_table(s))])
            live.update(trials_table(study))
        best = best_trial(study)
        if best is not None:
            parent.log_metrics({f"best_{t['metric']}": best.value})
            parent.set_tags({f"best.{k}": v for k, v in best.params.items()})
        for path in study_figures(study, FIGURES / name):
            parent.log_artifact(path, "optuna")
    best_file = write_best(study, t["metric"])
    states = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    if best is not None:
        console.print(f"best trial {best.number}: {t['metric']} {best.value:.4f} with {best.params}; "
                      f"written to {best_file} (`fcos-exp tune --apply` puts it in params.yaml)")
    else:
        console.print("no trial completed yet")
    console.print(f"study '{name}': {states}; {time.perf_counter() - start:.0f} s; MLflow {tracking_uri()}")
    return {"best": None if best is None else {"value": best.value, "params": best.params}, "states": states}
