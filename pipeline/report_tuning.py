"""The tuning section of the report: the Optuna study (trials by state, best, figures) and its MLflow runs."""
from __future__ import annotations

import warnings
from pathlib import Path

DEFAULT_JOURNAL = "experiments/optuna.journal"   # `fcos-exp tune`'s storage when tune.storage is null
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def shown_url(url: str) -> str:
    """The storage without its password."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def open_study(url: str, name: str):
    """(study, None) or (None, why not): never creates a storage that is not there."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    local = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None if "://" in url else url
    if local is not None and not Path(local).is_file():
        return None, f"no Optuna storage at {url}"
    try:
        storage = JournalStorage(JournalFileBackend(url)) if "://" not in url else url
        return optuna.load_study(study_name=name, storage=storage), None
    except KeyError:
        return None, f"no study named '{name}' in {shown_url(url)}"
    except Exception as e:   # corrupt journal, unreachable database, missing driver
        first = str(e).splitlines()[0][:150] if str(e) else ""
        return None, f"Optuna storage {shown_url(url)} is unreadable ({type(e).__name__}: {first})"


def study_figures(study, assets: Path) -> list[Path]:
    """Optimisation history (>= 1 complete trial), parameter importances (>= 2), intermediate values."""
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
        fig = ax.figure
        fig.set_size_inches(6.4, 3.8)
        fig.tight_layout()
        path = assets / f"tuning_{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _study_summary(study, assets: Path) -> dict:
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state.name == s for t in trials) for s in STATES}
    best = None
    if counts["COMPLETE"] and len(study.directions) == 1:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": b.params}
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
             if t.datetime_complete and t.datetime_start else None}
            for t in trials if t.state != TrialState.WAITING]
    return {"counts": counts, "best": best, "trials": rows, "figures": study_figures(study, assets),
            "direction": study.directions[0].name.lower() if len(study.directions) == 1 else "multi-objective"}


def _mlflow_summary(runs: list, name: str) -> dict | None:
    """The study's parent run (tag optuna_study=<name>) and its nested trial runs counted by optuna_state."""
    parents = [r for r in runs if r.data.tags.get("optuna_study") == name and "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        return None
    ids = {p.info.run_id for p in parents}
    trials = [t for t in runs if t.data.tags.get("mlflow.parentRunId") in ids]
    counts: dict[str, int] = {}
    for t in trials:
        state = t.data.tags.get("optuna_state", t.info.status)
        counts[state] = counts.get(state, 0) + 1
    return {"parents": [(p.info.run_name, p.info.run_id) for p in parents], "counts": counts,
            "runs": {t.data.tags.get("optuna_trial"): t.info.run_id for t in trials}}


def tuning_section(params: dict, runs: list, storage: str | None, study_name: str | None, assets: Path) -> dict:
    """Everything the report says about tuning; `missing` explains an absent or unreadable study."""
    tune = params.get("tune") or {}
    name = study_name or tune.get("study_name") or "fcos-exp"
    url = storage or tune.get("storage") or DEFAULT_JOURNAL
    study, missing = open_study(url, name)
    section = {"name": name, "storage": shown_url(url), "missing": missing,
               "mlflow": _mlflow_summary(runs, name)}
    if study is not None:
        section.update(_study_summary(study, assets))
    return section
