"""What every evaluation states beside its numbers, and VOC's metric beside COCO's (eval.voc_metric).

`protocol` describes each metric evaluate computes (IoU thresholds, detections per image, interpolation,
how difficult and crowd boxes count) and the decoding the detections were cut at before any of them saw
them; it goes into metrics/eval.json ("protocol"), the printed titles, the MLflow tag `eval_protocol` (one
line, `summary`) and the report's header."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fcos.voc_eval import INTERPOLATIONS, voc_evaluate

if TYPE_CHECKING:
    from .params_schema import Params

LABELS = {"coco": "COCO AP50", "voc07": "VOC07 11-point mAP@0.5", "voc": "VOC all-point mAP@0.5"}


def voc_metrics(setting) -> list[str]:
    """eval.voc_metric as a list: null -> [], "voc07" -> ["voc07"], a list as it is."""
    if setting is None:
        return []
    return [setting] if isinstance(setting, str) else list(setting)


def difficult_counts(gt: dict) -> tuple[int, int]:
    """(boxes flagged difficult, how many of them the prepared json marks crowd: data.eval_difficult false)."""
    flagged = [a for a in gt["annotations"] if a.get("difficult")]
    return len(flagged), sum(bool(a.get("iscrowd")) for a in flagged)


def protocol(params: Params, gt: dict, iou_thresholds, voc: list[str]) -> dict:
    """The protocol of evaluate's metrics on the ground truth `gt` (the prepared test json)."""
    n, as_crowd = difficult_counts(gt)
    crowd = sum(bool(a.get("iscrowd")) for a in gt["annotations"]) - as_crowd
    difficult = ("none in the test split" if n == 0 else
                 f"{_boxes(n)} ignored like crowd boxes (data.eval_difficult: false)" if as_crowd == n else
                 f"{_boxes(n)} counted as ordinary ground truth (data.eval_difficult: true)" if as_crowd == 0 else
                 f"{_boxes(n)}, {as_crowd} of them ignored")
    crowd_rule = f"{_boxes(crowd, 'crowd ')} (iscrowd) in the test split" if crowd else \
        "no crowd boxes in the test split"
    d = params.decode
    out = {
        "detections": {"score_thresh": d.score_thresh, "nms_thresh": d.nms_thresh,
                       "max_per_image": d.detections_per_img,
                       "note": "cut by the model's decoding (decode.*) before any metric saw them"},
        "coco": {"metric": "COCOeval bbox (" + params.eval.backend + ")",
                 "iou_thresholds": [round(float(t), 2) for t in iou_thresholds], "max_dets": [1, 10, 100],
                 "interpolation": "101-point", "difficult": difficult,
                 "crowd": f"ignore regions: a detection on one is neither a true nor a false positive ({crowd_rule})"},
        "errors": {"metric": "TIDE (tidecv 1.0.1 definitions, fcos.tide)", "iou": 0.5, "background_iou": 0.1,
                   "max_dets": 100, "interpolation": "101-point", "difficult": difficult,
                   "ap": "mean over the classes with ground truth or detections (a class detected but absent "
                         "from the test split counts 0)",
                   "crowd": "ignore regions: a detection covering one of its class (intersection over the "
                            f"detection's area > 0.5) is neither a true nor a false positive ({crowd_rule})"},
    }
    for name in voc:
        out[name] = {"metric": LABELS[name], "iou": 0.5, "max_dets": None, "interpolation": INTERPOLATIONS[name],
                     "difficult": f"{_boxes(n)} ignored: neither true nor false positives, not counted in recall"
                                  if n else "none in the test split",
                     "crowd": f"ignored like difficult boxes ({crowd_rule})"}
    return out


def _boxes(n: int, kind: str = "") -> str:
    return f"{n} {kind}box{'' if n == 1 else 'es'}"


def summary(p: dict) -> str:
    """One line: each metric's rules, then the detections' cut."""
    c = p["coco"]
    parts = [f"COCO AP@[{c['iou_thresholds'][0]:.2f}:{c['iou_thresholds'][-1]:.2f}] 101-point, maxDets 100, "
             f"difficult: {_short(c['difficult'])}"]
    parts += [f"{p[n]['metric']}, difficult ignored" for n in ("voc07", "voc") if n in p]
    d = p["detections"]
    parts.append(f"detections score >= {d['score_thresh']}, <= {d['max_per_image']}/image")
    return "; ".join(parts)


def _short(rule: str) -> str:
    return "none" if rule.startswith("none") else "ignored" if "ignored" in rule and "of them" not in rule \
        else "counted" if "counted" in rule else "partly ignored"


def voc_results(gt: dict, detections: np.ndarray, voc: list[str]) -> dict:
    """{name: {"mAP", "per_class_AP" by class name}} for each VOC metric asked for (None: no box counted)."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    out = {}
    for name in voc:
        r = voc_evaluate(gt, detections, name)
        out[name] = {"mAP": r["mAP"], "per_class_AP": {names[c]: v for c, v in r["per_class_AP"].items()}}
    return out
