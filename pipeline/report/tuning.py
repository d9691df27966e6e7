"""The tuning section of the report: the Optuna study (trials by state, best, figures) and its MLflow runs."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..paths import DEFAULT_JOURNAL
from ..tuning.storage import open_study, shown_url
from ..tuning.study import STUDY_UID, study_figures

if TYPE_CHECKING:
    from ..params_schema import Params

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


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


def _mlflow_summary(runs: list, name: str, uid: str | None) -> dict | None:
    """The study's parent runs (tag optuna_study=<name>, and its uid where the run has one: another project's
    study of the same name is not this one) and their nested trial runs counted by optuna_state."""
    parents = [r for r in runs if r.data.tags.get("optuna_study") == name and r.data.tags.get("fcos_role") == "study"
               and (uid is None or r.data.tags.get(STUDY_UID, uid) == uid)]
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


def tuning_section(params: Params, runs: list, storage: str | None, study_name: str | None, assets: Path) -> dict:
    """Everything the report says about tuning; `missing` explains an absent or unreadable study."""
    name = study_name or params.tune.study_name
    url = storage or params.tune.storage or str(DEFAULT_JOURNAL)
    study, missing = open_study(url, name)
    uid = None if study is None else study.user_attrs.get(STUDY_UID)
    section = {"name": name, "storage": shown_url(url), "missing": missing,
               "mlflow": _mlflow_summary(runs, name, uid)}
    if study is not None:
        section.update(_study_summary(study, assets))
    return section
