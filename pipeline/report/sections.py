"""The report's content as a list of blocks (header, headings, paragraphs, tables, images), rendered to
Markdown and HTML by html.py. A missing value is the cell MISSING."""
from __future__ import annotations

import math

from .figures import curves_figure, label, per_class_ap50, per_class_figure

MISSING = "—"
AP_COLUMNS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
DELTA_KEYS = [*AP_COLUMNS, "train_seconds", "ms_per_image"]


def finite(v) -> float | None:
    """A metric's value, or None when absent or not finite: MLflow's sqlite store keeps inf as the largest
    float, which must neither rank first nor print as a 309-digit number."""
    return v if isinstance(v, (int, float)) and math.isfinite(v) and abs(v) < 1e300 else None


def num(v, digits: int = 3) -> str:
    v = finite(v)
    return MISSING if v is None else f"{v:.{digits}f}"


def deltas(ctx: dict) -> list[dict]:
    base = ctx["baseline"]
    text = (f"Baseline: {base.name} ({base.run_id}); each cell is the run's value minus the baseline's "
            f"({MISSING} when either lacks it). Times in seconds and ms per image: lower is better.")

    def delta(r, key):
        a, b = r.value(key), base.value(key)
        return MISSING if a is None or b is None else f"{a - b:+.{1 if key in DELTA_KEYS[-2:] else 3}f}"

    rows = [[r.name, r.run_id[:8], *(delta(r, k) for k in DELTA_KEYS)]
            for r in ctx["rows"] if r is not base]
    head = ["run", "id", *(f"Δ{k}" for k in AP_COLUMNS), "Δtrain s", "Δms/img"]
    table = {"kind": "table", "id": "deltas", "head": head, "rows": rows, "classes": [""] * len(rows)}
    blocks = [{"kind": "h2", "text": "Deltas against the baseline"}, {"kind": "p", "text": text}]
    return blocks + ([table] if rows else [])


def figures(ctx: dict) -> list[dict]:
    top, assets = ctx["top"], ctx["assets"]
    title = "Curves of the best run" if len(top) == 1 else f"Curves of the top {len(top)} runs"
    blocks = [{"kind": "h2", "text": title}]
    curves = curves_figure(top, ctx["val_metric"], assets / "curves.png") if top else None
    blocks.append({"kind": "img", "path": curves, "alt": "training loss and validation curves"} if curves else
                  {"kind": "p", "text": "No run with test metrics has recorded curves."})
    blocks.append({"kind": "h2", "text": "Per-class AP50 of the top runs"})
    per_class = {label(r): per_class_ap50(r) for r in top}
    classes = sorted({c for v in per_class.values() for c in v})
    if not classes:
        return blocks + [{"kind": "p", "text": "No per-class AP50 recorded (`fcos-exp evaluate` logs it)."}]
    bars = per_class_figure(top, assets / "per_class_ap50.png")
    rows = [[c, *(num(v.get(c)) for v in per_class.values())] for c in classes]
    return blocks + [{"kind": "img", "path": bars, "alt": "per-class AP50"},
                     {"kind": "table", "id": "per-class", "head": ["class", *per_class], "rows": rows,
                      "classes": [""] * len(rows)}]


def tuning(t: dict) -> list[dict]:
    blocks = [{"kind": "h2", "text": "Tuning"}]
    if t["missing"]:
        blocks.append({"kind": "p", "text": f"Optuna study '{t['name']}': {t['missing']} "
                                            "(`fcos-exp tune`, or `--storage`/`--study-name` to point at it)."})
    else:
        counts = ", ".join(f"{k} {v}" for k, v in t["counts"].items() if v)
        blocks.append({"kind": "p", "text": f"Optuna study '{t['name']}' in {t['storage']} ({t['direction']}): "
                                            f"{sum(t['counts'].values())} trials: {counts or 'none yet'}."})
        if t["best"]:
            b = t["best"]
            blocks.append({"kind": "p", "text": f"Best trial {b['number']}: {num(b['value'], 4)} with "
                                                f"{_params_text(b['params'])}."})
        runs = (t["mlflow"] or {}).get("runs", {})
        rows = [[str(x["number"]), x["state"], num(x["value"], 4), _params_text(x["params"]), num(x["seconds"], 0),
                 runs.get(str(x["number"]), MISSING)[:8]] for x in t["trials"]]
        if rows:
            blocks.append({"kind": "table", "id": "trials", "head": ["trial", "state", "value", "params", "seconds",
                                                                     "MLflow run"],
                           "rows": rows, "classes": ["failed" if r[1] in ("FAIL", "PRUNED") else "" for r in rows]})
        blocks += [{"kind": "img", "path": p, "alt": p.stem.replace("_", " ")} for p in t["figures"]]
        if t["counts"]["COMPLETE"] < 2:
            blocks.append({"kind": "p", "text": "Parameter importances need at least 2 complete trials."})
    m = t["mlflow"]
    if m:
        parents = ", ".join(f"{n} ({i[:8]})" for n, i in m["parents"])
        counts = ", ".join(f"{k} {v}" for k, v in sorted(m["counts"].items())) or "no trial runs"
        blocks.append({"kind": "p", "text": f"MLflow: study run {parents}; nested trial runs: {counts}."})
    elif t["missing"]:
        blocks.append({"kind": "p", "text": f"MLflow holds no study run tagged optuna_study={t['name']} either."})
    return blocks


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or MISSING


def build_blocks(ctx: dict) -> list[dict]:
    from .compare import leaderboard, paired_blocks  # seed repeats grouped; intervals (compare imports this module)
    blocks = [{"kind": "header", "items": ctx["header"]}]
    if ctx.get("empty"):
        return blocks + [{"kind": "p", "id": "empty", "text": ctx["empty"]}] + tuning(ctx["tuning"])
    sort_by, rows = ctx["sort_by"], ctx["rows"]
    best = ctx["best"]
    lower = sort_by in ("ms_per_image", "train_seconds")
    note = f"{len(rows)} runs, best first by " + (f"{sort_by} (lower is better)" if lower else f"test {sort_by}")
    if len(ctx["groups"]) < len(rows):
        note += (" (the mean over seeds: runs whose params differ only in train.seed are one row, mean ± std over "
                 "the seeds, and the interval pools them)")
    note += (f"; best: {best.name} ({best.run_id[:8]}). " if best else f"; no run has {sort_by} yet. ")
    failed = sum(r.status in ("FAILED", "KILLED") for r in rows)
    note += (f"{failed} failed or killed runs are marked ✗. " if failed else "") + f"{MISSING}: not recorded."
    blocks += [{"kind": "h2", "text": "Leaderboard"}, {"kind": "p", "text": note}, leaderboard(ctx)]
    blocks += deltas(ctx) + paired_blocks(ctx) + figures(ctx) + ctx.get("eval_blocks", []) + tuning(ctx["tuning"])
    blocks.append({"kind": "h2", "text": f"Detections of the best run{f' ({best.name})' if best else ''}"})
    blocks.append({"kind": "grid", "images": [(p, p.stem) for p in ctx["detections"]]} if ctx["detections"] else
                  {"kind": "p", "text": ctx["no_detections"]})
    blocks.append({"kind": "h2", "text": "Reproduce"})
    blocks.append({"kind": "p", "text": "Each command checks out the run's commit and re-runs the pipeline with "
                                        "the params it logged that differ from that commit's params.yaml."})
    blocks.append({"kind": "commands", "items": [(f"{r.name} ({r.run_id[:8]})", ctx["commands"][r.run_id])
                                                 for r in rows]})
    return blocks
