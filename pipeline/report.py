"""`fcos-exp report`: the tracked runs as reports/report.md and a self-contained reports/report.html."""
from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .params import flatten
from .report_html import render_html, render_markdown
from .tracking import dataset_hash, git_commit, tracking_uri

COLUMNS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


@dataclass
class Row:
    """One pipeline run of the leaderboard; None marks a missing value."""

    run_id: str
    name: str
    status: str
    params: dict
    tags: dict
    metrics: dict
    start: int
    curves: dict = field(default_factory=dict)

    def get(self, key: str):
        return self.metrics.get(f"test/{key}")


def fetch_rows(client, exp_id: str, tag: str | None, status: str | None, last: int | None) -> list[Row]:
    """Pipeline runs (not tuning studies or their trials), newest first, filtered as asked."""
    filters = []
    if tag:
        if "=" not in tag:
            raise UserError(f"--filter-tag must look like key=value, got {tag!r}")
        k, v = tag.split("=", 1)
        filters.append(f"tags.`{k}` = '{v}'")
    if status:
        filters.append(f"attributes.status = '{status.upper()}'")
    runs = client.search_runs([exp_id], " and ".join(filters), max_results=1000, order_by=["attributes.start_time DESC"])
    runs = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("fcos_role") != "study"]
    runs = runs[:last] if last else runs
    return [Row(r.info.run_id, r.info.run_name or r.info.run_id[:8], r.info.status, r.data.params, r.data.tags,
                r.data.metrics, r.info.start_time or 0) for r in runs]


def sort_rows(rows: list[Row], metric: str) -> list[Row]:
    """Best first by `metric`; runs without it go last (in start order)."""
    have = [r for r in rows if r.get(metric) is not None]
    missing = [r for r in rows if r.get(metric) is None]
    return sorted(have, key=lambda r: -r.get(metric)) + sorted(missing, key=lambda r: r.start)


def pick_baseline(rows: list[Row], baseline: str | None) -> Row | None:
    if not rows:
        return None
    if baseline is None:
        return min(rows, key=lambda r: r.start)
    for r in rows:
        if baseline in (r.run_id, r.name):
            return r
    raise UserError(f"baseline run {baseline!r} not found among the reported runs")


def reproduce_command(row: Row, current: dict) -> str:
    """The command that re-runs `row`: its commit and the params that differ from today's params.yaml."""
    changed = [f"-S {k}={v}" for k, v in sorted(row.params.items()) if k in current and str(current[k]) != v]
    commit = row.tags.get("git_commit", "unknown")
    checkout = f"git checkout {commit[:12]} && " if commit != "unknown" else ""
    return f"{checkout}dvc exp run {' '.join(changed)}".strip()


def add_curves(client, rows: list[Row]) -> None:
    for r in rows:
        for key in ("train/final_loss", "val/AP50", "epoch/final_loss"):
            history = client.get_metric_history(r.run_id, key)
            if history:
                r.curves[key] = sorted((m.step, m.value) for m in history)


def tuning_section(client, exp_id: str, out: Path) -> dict | None:
    """Studies recorded by `fcos-exp tune`: trial counts by state, best value, the study's figures."""
    studies = client.search_runs([exp_id], "tags.fcos_role = 'study'", max_results=20)
    if not studies:
        return None
    result = []
    for s in studies:
        trials = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{s.info.run_id}'", max_results=5000)
        counts: dict[str, int] = {}
        for t in trials:
            state = t.data.tags.get("optuna_state", "RUNNING")
            counts[state] = counts.get(state, 0) + 1
        figures = []
        try:
            for a in client.list_artifacts(s.info.run_id, "optuna"):
                local = Path(client.download_artifacts(s.info.run_id, a.path, str(out)))
                figures.append(local)
        except Exception:   # artifacts unreachable: the counts still stand
            pass
        best = {k[5:]: v for k, v in s.data.tags.items() if k.startswith("best.")}
        result.append({"name": s.data.tags.get("optuna_study"), "counts": counts, "best_params": best,
                       "best_value": next((v for k, v in s.data.metrics.items() if k.startswith("best_")), None),
                       "figures": figures})
    return {"studies": result}


def detection_images(client, row: Row | None, out: Path) -> list[Path]:
    if row is None:
        return []
    try:
        arts = [a.path for a in client.list_artifacts(row.run_id, "detections")]
    except Exception:
        return []
    chosen = [p for p in arts if p.endswith("mosaic.png")] or [p for p in arts if p.endswith(".png")][:6]
    paths = []
    for p in chosen:
        try:
            paths.append(Path(client.download_artifacts(row.run_id, p, str(out))))
        except Exception:
            pass
    return paths


def run(params: dict, console, experiment: str | None, filter_tag: str | None, status: str | None,
        last: int | None, sort_by: str, baseline: str | None, out: Path) -> Path:
    from mlflow import MlflowClient

    from .report_figures import curves_figure, per_class_figure

    if sort_by not in COLUMNS + ["AR1", "AR10", "AR100"]:
        raise UserError(f"--sort-by must be one of {', '.join(COLUMNS)}, AR1, AR10, AR100; got {sort_by!r}")
    name = experiment or params["tracking"]["experiment"]
    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(name)
    out.mkdir(parents=True, exist_ok=True)
    assets = out / "assets"
    shutil.rmtree(assets, ignore_errors=True)
    assets.mkdir()
    rows = fetch_rows(client, exp.experiment_id, filter_tag, status, last) if exp else []
    rows = sort_rows(rows, sort_by)
    base = pick_baseline(rows, baseline)
    top = [r for r in rows if r.get(sort_by) is not None][:3]
    add_curves(client, top)
    current = flatten(params)
    context = {
        "title": f"fcos-exp report: {name}",
        "header": {"git commit": git_commit(), "dataset hash": dataset_hash(), "tracking URI": tracking_uri(),
                   "experiment": name, "generated": dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
                   "sorted by": sort_by},
        "rows": rows, "sort_by": sort_by, "baseline": base,
        "commands": {r.run_id: reproduce_command(r, current) for r in rows},
        "curves": curves_figure(top, assets / "curves.png") if top else None,
        "per_class": per_class_figure(top, assets / "per_class_ap50.png") if top else None,
        "tuning": tuning_section(client, exp.experiment_id, assets) if exp else None,
        "detections": detection_images(client, top[0] if top else None, assets),
        "empty_reason": None if rows else (f"no runs in MLflow experiment '{name}' at {tracking_uri()}"
                                           f"{' matching the filters' if exp and (filter_tag or status) else ''}: "
                                           "run `dvc repro` first"),
    }
    (out / "report.md").write_text(render_markdown(context, out))
    (out / "report.html").write_text(render_html(context))
    if not rows:
        console.print(context["empty_reason"])
    console.print(f"report: {out / 'report.html'} (self-contained) and {out / 'report.md'}; {len(rows)} runs")
    return out / "report.html"
