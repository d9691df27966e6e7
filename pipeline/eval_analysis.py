"""What `evaluate` adds to the COCO numbers: precision-recall and F1 curves at IoU .5 from COCOeval's arrays,
each class's F1-optimal score threshold (metrics/pr.json), the confusion matrix, their CSVs for `dvc plots`
and PNGs (plots/eval/); and `class_thresholds`, which turns a `score_thresh` setting (a number, or `f1`:
those thresholds) into one threshold per class for visualize and predict."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .errors import UserError
from .paths import CONFUSION_CSV, EVAL_PLOTS, PR_CSV, PR_METRICS

IOU = 0.5
NO_F1_THRESH = 0.3   # `f1` while no class has a true positive (an untrained model): no F1 to optimise


def class_thresholds(setting: float | str, classes: list[str]) -> np.ndarray:
    """[K] score thresholds: `setting` for every class, or for `f1` each class's F1-optimal threshold from
    metrics/pr.json (the all-classes one for classes without test objects or without a true positive, and
    NO_F1_THRESH while no class has one)."""
    if setting != "f1":
        try:
            value = float(setting)
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            raise UserError(f"score threshold: must be a number in [0, 1] or f1, got {setting!r}")
        return np.full(len(classes), value)
    if not PR_METRICS.is_file():
        raise UserError(f"{PR_METRICS}: not found; score threshold f1 needs `fcos-exp evaluate` first, "
                        "or give a number")
    pr = _read_pr()
    if list(pr["per_class"]) != list(classes):
        raise UserError(f"{PR_METRICS}: written for classes {list(pr['per_class'])}, the model has {classes}; "
                        "run `fcos-exp evaluate` again")
    return _f1_thresholds(pr)


def _threshold(v) -> bool:
    ok = v is None or isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1   # NaN fails too
    return bool(ok)


def _read_pr() -> dict:
    """metrics/pr.json, its thresholds checked (null or a number in [0, 1]): a damaged or hand-edited file is
    one line, never NaN or 7 silently taken as a threshold."""
    try:
        pr = json.loads(PR_METRICS.read_text())
        entries = [pr["all"], *pr["per_class"].values()]
        bad = next((e for e in entries if not isinstance(e, dict) or not _threshold(e.get("threshold"))), "ok")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{PR_METRICS}: not readable as evaluate wrote it ({type(e).__name__}); run `fcos-exp "
                        "evaluate` again") from None
    if bad != "ok":
        raise UserError(f"{PR_METRICS}: a threshold must be null or a number in [0, 1], got {bad!r:.80}; run "
                        "`fcos-exp evaluate` again")
    return pr


def _f1_thresholds(pr: dict) -> np.ndarray:
    fallback = NO_F1_THRESH if pr["all"]["threshold"] is None else pr["all"]["threshold"]
    return np.array([fallback if v["threshold"] is None else v["threshold"] for v in pr["per_class"].values()])


def _confusion_rows(matrix: np.ndarray, names: list[str]):
    """One (actual, predicted) row per counted object or detection: DVC's confusion template counts rows."""
    for (p, t), n in np.ndenumerate(matrix):
        yield from [(names[t], names[p])] * int(n)


def write_analysis(m: dict, gt_path: Path, confusion_thresh: float | str) -> dict:
    """From `fcos.engine.evaluate`'s result `m` (precision/scores arrays, detections [N, 7] with category
    ids) and the ground-truth json: metrics/pr.json, plots/pr_curve.csv, plots/confusion.csv and
    plots/eval/{pr_curve,f1_curve,confusion_matrix,confusion_matrix_normalized}.png. Returns pr.json."""
    from fcos.confusion import confusion_from_coco
    from fcos.pr_curves import f1_thresholds, pr_curves

    from .figures_eval import confusion_figure, f1_figure, pr_figure

    curves = pr_curves(m["precision"], m["scores"], m["classes"], IOU, m["iou_thresholds"])
    best = f1_thresholds(curves)
    pr = {"iou": IOU, "F1": best["all"]["f1"], "f1_thresh": best["all"]["threshold"],
          "all": best["all"], "per_class": best["per_class"]}
    thresh = _f1_thresholds(pr) if confusion_thresh == "f1" else confusion_thresh
    matrix = confusion_from_coco(json.loads(Path(gt_path).read_text()), m["detections"], IOU, thresh)
    pr["confusion"] = {"iou": IOU, "score_thresh": confusion_thresh, "rows": "predicted", "columns": "true",
                       "classes": [*curves.classes, "background"], "matrix": matrix.tolist()}
    PR_METRICS.parent.mkdir(parents=True, exist_ok=True)
    PR_METRICS.write_text(json.dumps(pr, indent=2))

    PR_CSV.parent.mkdir(parents=True, exist_ok=True)
    with open(PR_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recall", "precision", *curves.classes])
        for r, mean, row in zip(curves.recall, curves.mean_precision(), curves.precision, strict=True):
            w.writerow([f"{r:.2f}", f"{mean:.4f}", *("" if np.isnan(v) else f"{v:.4f}" for v in row)])
    with open(CONFUSION_CSV, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["actual", "predicted"])
        w.writerows(_confusion_rows(matrix, pr["confusion"]["classes"]))

    note = f"IoU >= {IOU}, score >= " + ("each class's F1-optimal threshold" if confusion_thresh == "f1"
                                         else f"{confusion_thresh}")
    pr_figure(curves, EVAL_PLOTS / "pr_curve.png")
    f1_figure(curves, best, EVAL_PLOTS / "f1_curve.png")
    confusion_figure(matrix, curves.classes, EVAL_PLOTS / "confusion_matrix.png", False, note)
    confusion_figure(matrix, curves.classes, EVAL_PLOTS / "confusion_matrix_normalized.png", True, note)
    return pr
