"""`fcos-exp report`: the tracked runs as reports/report.md and a self-contained reports/report.html.

This module reads MLflow (runs, histories, artifacts, through pipeline.tracking); sections.py lays the
report out, tuning.py reads the Optuna study, figures.py draws, html.py renders."""
from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fcos.coco_eval import STAT_NAMES as STATS

from ..errors import UserError
from ..params import flatten
from ..paths import REPORTS
from ..provenance import dataset_hash, git_commit, project_root
from ..tracking import reader, tracking_uri
from .publish import claim, publish, staging
from .sections import finite

# Sortable metrics where lower is better, and the MLflow metric each one is read from.
LOWER_IS_BETTER = {"ms_per_image": "test/ms_per_image", "train_seconds": "train_summary/train_seconds"}
STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
TOP = 3            # runs drawn in the curves and per-class figures
MAX_DETECTIONS = 8


@dataclass
class Row:
    """One pipeline run (not a tuning study or trial); value() is None for a metric the run lacks."""

    run_id: str
    name: str
    status: str
    params: dict
    tags: dict
    metrics: dict
    start: int
    curves: dict = field(default_factory=dict)

    def value(self, key: str):
        """The metric, or None when absent or not finite (sections.finite)."""
        return finite(self.metrics.get(LOWER_IS_BETTER.get(key, f"test/{key}")))


def search_all(client, exp_id: str) -> list:
    """Every run of the experiment, newest first (all result pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], "", max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def is_tuning(run) -> bool:
    tags = run.data.tags
    return "mlflow.parentRunId" in tags or "optuna_study" in tags or tags.get("fcos_role") == "study"


def fetch_rows(runs: list, tag: str | None, status: str | None, last: int | None) -> list[Row]:
    """Pipeline runs (newest first, as given), filtered by tag key=value and status, the `last` newest kept."""
    runs = [r for r in runs if not is_tuning(r)]
    if tag:
        key, value = tag.split("=", 1)
        runs = [r for r in runs if r.data.tags.get(key) == value]
    if status:
        runs = [r for r in runs if r.info.status == status]
    return [Row(r.info.run_id, r.info.run_name or r.info.run_id[:8], r.info.status, r.data.params, r.data.tags,
                r.data.metrics, r.info.start_time or 0) for r in runs[:last]]


def sort_rows(rows: list[Row], metric: str) -> list[Row]:
    """Best first by `metric` (highest, or lowest for times); runs without it last, oldest first."""
    sign = 1 if metric in LOWER_IS_BETTER else -1
    have = [r for r in rows if r.value(metric) is not None]
    missing = [r for r in rows if r.value(metric) is None]
    return sorted(have, key=lambda r: (sign * r.value(metric), r.start)) + sorted(missing, key=lambda r: r.start)


def pick_baseline(rows: list[Row], baseline: str | None) -> Row | None:
    """The run given by id, id prefix or unique name; by default the oldest run."""
    if not rows:
        return None
    if baseline is None:
        return min(rows, key=lambda r: r.start)
    found = [r for r in rows if r.run_id.startswith(baseline)] or [r for r in rows if r.name == baseline]
    if not found:
        raise UserError(f"--baseline {baseline!r}: no reported run has this id or name")
    if len(found) > 1:
        raise UserError(f"--baseline {baseline!r}: {len(found)} runs match; give the run id")
    return found[0]


def _params_at(commit: str) -> dict | None:
    """params.yaml as committed at `commit`, flattened; None when git cannot show it."""
    try:
        text = subprocess.run(["git", "show", f"{commit}:params.yaml"], capture_output=True, text=True,
                              timeout=10, cwd=project_root(), check=True).stdout
        return flatten(yaml.safe_load(text) or {})
    except (OSError, subprocess.SubprocessError, yaml.YAMLError):
        return None


def _yaml_value(text: str) -> str:
    return {"None": "null", "True": "true", "False": "false"}.get(text, text)


def reproduce_command(row: Row, current: dict, cache: dict) -> str | None:
    """`git checkout <commit> && dvc exp run -S k=v ...`: the logged params that differ from params.yaml at
    the run's commit (from the current params when git does not know that commit). None without params."""
    if not row.params:
        return None
    commit = row.tags.get("git_commit", "unknown")
    if commit != "unknown" and commit not in cache:
        cache[commit] = _params_at(commit)
    base = cache.get(commit) or current
    changed = [shlex.quote(f"{k}={_yaml_value(v)}") for k, v in sorted(row.params.items())
               if k in base and str(base[k]) != v]
    checkout = f"git checkout {commit[:12]} && " if commit != "unknown" else ""
    return f"{checkout}dvc exp run" + "".join(f" -S {c}" for c in changed)


def add_curves(client, rows: list[Row], val_metric: str) -> None:
    for r in rows:
        for key in ("train/final_loss", f"val/{val_metric}"):
            history = client.get_metric_history(r.run_id, key)
            if history:
                r.curves[key] = sorted((m.step, m.value) for m in history)


def detection_images(client, row: Row | None, assets: Path) -> tuple[list[Path], str | None]:
    """The best run's detection PNGs (the mosaic only when there are no single images), or why there are none."""
    if row is None:
        return [], "no run has test metrics yet, so there is no best run to show"
    try:
        folder = Path(client.download_artifacts(row.run_id, "detections", str(assets)))
    except Exception as e:   # no such artifact, unreachable artifact store
        return [], f"run {row.name} has no detection images ({type(e).__name__}); `fcos-exp visualize` logs them"
    pngs = sorted(p for p in folder.glob("*.png") if p.name != "mosaic.png")[:MAX_DETECTIONS]
    pngs = pngs or sorted(folder.glob("mosaic.png"))
    return pngs, None if pngs else f"run {row.name} logged no detection images"


def _check(sort_by: str, status: str | None, filter_tag: str | None, last: int | None) -> str | None:
    if sort_by not in STATS and sort_by not in LOWER_IS_BETTER:
        raise UserError(f"--sort-by must be one of {', '.join([*STATS, *LOWER_IS_BETTER])}; got {sort_by!r}")
    if filter_tag is not None and ("=" not in filter_tag or filter_tag.startswith("=")):
        raise UserError(f"--filter-tag must look like key=value, got {filter_tag!r}")
    if last is not None and last < 1:
        raise UserError(f"--last must be at least 1, got {last}")
    if status is not None and status.upper() not in STATUSES:
        raise UserError(f"--status must be one of {', '.join(STATUSES)}; got {status!r}")
    return status.upper() if status else None


def run(params: dict, console, experiment: str | None = None, filter_tag: str | None = None,
        status: str | None = None, last: int | None = None, sort_by: str = "AP50", baseline: str | None = None,
        out: Path = REPORTS, storage: str | None = None, study_name: str | None = None,
        resamples: int | None = None, seed: int | None = None) -> Path:
    """Build the report; zero matching runs give a report (and a message) saying so, not an error."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # keep stderr to the final lines
    status = _check(sort_by, status, filter_tag, last)
    name = experiment or params["tracking"]["experiment"]
    claim(out)   # before any work: a folder holding files of the user's is refused
    client = reader()
    exp = client.get_experiment_by_name(name)
    with staging(out) as stage:
        built = _build(params, console, client, exp, name, filter_tag, status, last, sort_by, baseline, stage,
                       storage, study_name, resamples, seed)
        publish(stage, out)
    console.print(f"report of {built['runs']} runs: {(out / 'report.html').resolve()} (self-contained, open it in "
                  f"a browser) and {(out / 'report.md').resolve()}")
    return out / "report.html"


def _build(params: dict, console, client, exp, name: str, filter_tag, status, last, sort_by, baseline,
           out: Path, storage, study_name, resamples: int | None = None, seed: int | None = None) -> dict:
    """The report's files in `out` (a staging folder); returns {"runs": the number reported}."""
    from .compare import group_rows, paired_context  # seed repeats as one row; paired bootstrap intervals
    from .errors import error_blocks, protocol_header  # protocols, TIDE errors, worst images
    from .eval import eval_blocks  # PR / F1 / confusion of the top runs, the dataset figure
    from .html import render_html, render_markdown
    from .sections import build_blocks
    from .tuning import tuning_section

    assets = out / "assets"
    assets.mkdir()
    runs = search_all(client, exp.experiment_id) if exp else []
    rows = sort_rows(fetch_rows(runs, filter_tag, status, last), sort_by)
    groups = group_rows(rows, sort_by)
    top = [g.best(sort_by) for g in groups if g.value(sort_by) is not None][:TOP]   # the best run of each top row
    val_metric = sort_by if sort_by in STATS else "AP50"
    add_curves(client, top, val_metric)
    cache: dict = {}
    current = flatten(params)
    filters = ", ".join(f for f in (filter_tag and f"tag {filter_tag}", status and f"status {status}",
                                    last and f"last {last}") if f) or "none"
    ctx = {
        "title": f"fcos-exp report: {name}",
        "header": {"git commit": git_commit(), "dataset hash": dataset_hash(), "tracking URI": tracking_uri(),
                   "experiment": name, "filters": filters, "sorted by": sort_by,
                   "generated": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
                   **protocol_header(rows)},
        "rows": rows, "groups": groups, "sort_by": sort_by, "val_metric": val_metric, "top": top,
        "best": top[0] if top else None, "baseline": pick_baseline(rows, baseline),
        "commands": {r.run_id: reproduce_command(r, current, cache) for r in rows},
        "tuning": tuning_section(params, runs, storage, study_name, assets),
        "assets": assets,
    }
    if not rows:
        where = f"MLflow experiment '{name}' at {tracking_uri()}"
        ctx["empty"] = (f"no runs in {where} match the filters ({filters})" if exp and filters != "none" else
                        f"no runs in {where}" if exp else f"no {where}") + ": run `dvc repro` first"
    else:
        ctx["paired"] = paired_context(client, groups, ctx["baseline"], sort_by, resamples, seed)
        ctx["detections"], ctx["no_detections"] = detection_images(client, ctx["best"], assets)
        ctx["eval_blocks"] = eval_blocks(client, ctx["top"], ctx["best"], assets) + \
            error_blocks(client, rows, ctx["top"], ctx["best"], assets)
    blocks = build_blocks(ctx)
    (out / "report.md").write_text(render_markdown(ctx["title"], blocks, out))
    (out / "report.html").write_text(render_html(ctx["title"], blocks))
    if not rows:
        console.print(ctx["empty"])
    return {"runs": len(rows)}
