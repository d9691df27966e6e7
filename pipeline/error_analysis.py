"""What evaluate adds to say why the AP is what it is: the TIDE error breakdown of the test split (fcos.tide)
in metrics/errors.json and plots/eval/errors.png, the worst images drawn in plots/eval/worst/ (one PNG each,
mosaic.png), every image's errors, worst first, in plots/errors_per_image.csv; VOC's metric (eval.voc_metric)
and the protocol of every metric (pipeline/eval_protocol.py) for metrics/eval.json; their MLflow metrics and
printed tables."""
from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.table import Table

from fcos.files import atomic_write
from fcos.tide import MAIN_ERRORS, MISS, NOT_EVALUATED, SPECIAL_ERRORS, TP, tide, worst_images

from .artifacts import write_json
from .drawing import MOSAIC_MAX
from .eval_protocol import LABELS, protocol, summary, voc_metrics, voc_results
from .paths import ERRORS_METRICS, ERRORS_PER_IMAGE_CSV, EVAL_PLOTS, WORST_IMAGES

if TYPE_CHECKING:
    from .params_schema import Params

ERRORS_FIGURE = EVAL_PLOTS / "errors.png"
RANKING_RULE = ("images ranked by the AP50 they lose, estimated: each main error type's dAP50 shared among its "
                "errors, a missed box an equal share of Miss's, a detection error a share proportional to its "
                "score (errors on crowd regions cost nothing); ties: more errors first, then the test split's "
                "order. Images without an error are not ranked.")


@dataclass
class Analysis:
    eval_fields: dict       # merged into metrics/eval.json: "protocol" and each VOC metric asked for
    errors: dict            # metrics/errors.json
    protocol_line: str      # the MLflow tag eval_protocol

    def mlflow_metrics(self) -> dict[str, float]:
        """test/errors/<type> (dAP50), test/errors/<type>_count, test/errors/AP50, test/<voc>_mAP and
        test/<voc>_AP/<class>; undefined values are left out."""
        e = self.errors
        out = {"test/errors/AP50": e["AP50"], **{f"test/errors/{k}": v for k, v in e["main"].items()},
               **{f"test/errors/{k}": v for k, v in e["special"].items()},
               **{f"test/errors/{k}_count": float(v) for k, v in e["counts"].items()}}
        for name in ("voc07", "voc"):
            if name in self.eval_fields:
                r = self.eval_fields[name]
                out[f"test/{name}_mAP"] = r["mAP"]
                out.update({f"test/{name}_AP/{c}": v for c, v in r["per_class_AP"].items()})
        return {k: v for k, v in out.items() if v is not None}

    def notes(self) -> list[str]:
        """Where the files are, how long the breakdown took, and what an unusual test split leaves undefined."""
        e = self.errors
        lines = []
        if e["num_images"] == 0:
            lines.append("the test split has no images: no error breakdown (every value n/a)")
        elif e["num_detections"] == 0:
            lines.append(f"no detections on the {e['num_images']} test images (decode.score_thresh "
                         f"{self.eval_fields['protocol']['detections']['score_thresh']}): every box is missed; "
                         "what needs a detection to fix is 0, what fixing every miss would give is n/a")
        empty = [c for c, v in e["per_class"].items() if v["num_gt"] == 0]
        if empty:
            lines.append(f"classes without ground truth in the test split: {', '.join(empty)} (their AP50 and "
                         "dAP50 are n/a; tidecv counts a class detected but absent as AP 0 in its mean)")
        worst = e["worst"]["images"]
        lines.append(f"TIDE errors in {e['seconds']:.2f} s: {ERRORS_METRICS}, {ERRORS_FIGURE}; "
                     + (f"the {len(worst)} worst images in {WORST_IMAGES}/ (mosaic.png: "
                        f"{'all' if len(worst) <= MOSAIC_MAX else f'the first {MOSAIC_MAX}'})" if worst else
                        "no worst images drawn (none with an error, or eval.worst_images 0)")
                     + f"; every image's errors in {ERRORS_PER_IMAGE_CSV}")
        return lines

    def log(self, tracker) -> None:
        tracker.log_metrics(self.mlflow_metrics())
        tracker.set_tags({"eval_protocol": self.protocol_line})
        tracker.log_artifact(ERRORS_METRICS, "metrics")

    def tables(self, coco_ap50: float | None) -> list[Table]:
        """The AP50 of each protocol (when VOC's metric is asked for) and the error breakdown, for stdout."""
        out = []
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
        p = self.eval_fields["protocol"]
        if any(n in self.eval_fields for n in ("voc07", "voc")):
            t = Table(title="AP at IoU 0.5 by protocol (test split): not interchangeable")
            t.add_column("metric")
            t.add_column("rules")
            t.add_column("value", justify="right")
            t.add_row(LABELS["coco"], f"101-point, maxDets 100, difficult: {p['coco']['difficult']}",
                      fmt(coco_ap50))
            for n in ("voc07", "voc"):
                if n in self.eval_fields:
                    t.add_row(LABELS[n], f"{p[n]['interpolation']}, difficult ignored",
                              fmt(self.eval_fields[n]["mAP"]))
            out.append(t)
        e = self.errors
        t = Table(title=f"Where AP50 is lost (TIDE at IoU 0.5, test split; AP50 {fmt(e['AP50'])}): AP50 gained "
                        "if each error type were fixed")
        t.add_column("")
        for n in (*MAIN_ERRORS, *SPECIAL_ERRORS):
            t.add_column(n, justify="right")
        t.add_row("dAP50", *(fmt(e["main"][n]) for n in MAIN_ERRORS),
                  *(fmt(e["special"][n]) for n in SPECIAL_ERRORS))
        t.add_row("errors", *(str(e["counts"][n]) for n in MAIN_ERRORS), "", "")
        out.append(t)
        return out


def analyse(params: Params, m: dict, gt_path: Path, records: list) -> Analysis:
    """From `fcos.engine.evaluate`'s result `m` (detections [N, 7] with category ids) on the test json at
    gt_path, whose images are `records` (fcos.data records: image_id, file): write errors.json, errors.png and
    the worst images; return what eval.json, MLflow and the printed tables take."""
    gt = json.loads(Path(gt_path).read_text())
    dets = np.asarray(m["detections"], np.float64).reshape(-1, 7)
    voc = voc_metrics(params.eval.voc_metric)
    proto = protocol(params, gt, m["iou_thresholds"], voc)
    start = time.perf_counter()
    result = tide(gt, dets)
    seconds = time.perf_counter() - start
    errors = _errors_json(result, gt, dets, proto["errors"], params.eval.worst_images, records)
    errors["seconds"] = seconds
    write_json(ERRORS_METRICS, errors)
    from .figures_errors import errors_figure
    errors_figure(errors, ERRORS_FIGURE)
    _draw_worst(result, gt, dets, records, errors["worst"]["images"])
    return Analysis({"protocol": proto, **voc_results(gt, dets, voc)}, errors, summary(proto))


def _errors_json(r, gt: dict, dets: np.ndarray, proto: dict, n_worst: int, records: list) -> dict:
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_class = {}
    det_class = dets[:, 6].astype(np.int64)
    gt_class = np.array([a["category_id"] for a in gt["annotations"]], np.int64)
    crowd = np.array([bool(a.get("iscrowd")) for a in gt["annotations"]], bool)
    for c, name in sorted(names.items()):
        counts = {e: int(((r.det_code == k) & (det_class == c)).sum()) for k, e in enumerate(MAIN_ERRORS[:MISS])}
        counts["Miss"] = int((r.gt_missed & (gt_class == c)).sum())
        n_gt = int(((gt_class == c) & ~crowd).sum())
        na = lambda values, n=n_gt: values if n else dict.fromkeys(values)   # no ground truth: n/a, not 0
        per_class[name] = {"AP50": r.per_class_ap[c] if n_gt else None, "num_gt": n_gt,
                           "main": na(r.per_class_main[c]), "special": na(r.per_class_special[c]), "counts": counts}
    files = {rec.image_id: Path(rec.file).name for rec in records}
    ranked = worst_images(r, len(r.image_ids))
    _write_ranking(r, ranked, files)
    worst = [{"rank": i + 1, "image_id": int(r.image_ids[p]), "file": files.get(int(r.image_ids[p])),
              "AP50_lost": float(r.image_loss[p]),
              "counts": dict(zip(MAIN_ERRORS, r.image_counts[p].tolist()))} for i, p in enumerate(ranked[:n_worst])]
    evaluated = int((r.det_code != NOT_EVALUATED).sum())
    return {"protocol": proto, "num_images": len(r.image_ids), "num_detections": evaluated, "AP50": r.ap,
            "main": r.main, "special": r.special, "counts": r.counts, "per_class": per_class,
            "worst": {"rule": RANKING_RULE, "per_image": str(ERRORS_PER_IMAGE_CSV), "images": worst}}


def _write_ranking(r, ranked: np.ndarray, files: dict) -> None:
    shutil.rmtree(WORST_IMAGES, ignore_errors=True)
    WORST_IMAGES.mkdir(parents=True)
    with atomic_write(ERRORS_PER_IMAGE_CSV) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["rank", "image_id", "file", "AP50_lost", *MAIN_ERRORS])
        for i, p in enumerate(ranked):
            image_id = int(r.image_ids[p])
            w.writerow([i + 1, image_id, files.get(image_id, ""), f"{r.image_loss[p]:.6f}",
                        *r.image_counts[p].tolist()])


def _draw_worst(r, gt: dict, dets: np.ndarray, records: list, worst: list[dict]) -> None:
    """plots/eval/worst/<rank>_<image>.png for each ranked image and their mosaic.png."""
    if not worst:
        return
    from fcos.data import load_image

    from .drawing import mosaic, save_image
    from .figures_errors import worst_image
    names = {c["id"]: c["name"] for c in gt["categories"]}
    by_id = {rec.image_id: rec for rec in records}
    wanted = {w["image_id"] for w in worst}
    anns = {}
    for i, a in enumerate(gt["annotations"]):
        if a["image_id"] in wanted:
            anns.setdefault(a["image_id"], []).append(i)
    panels = []
    for w in worst:
        image_id = w["image_id"]
        truth = []
        for i in anns.get(image_id, []):
            a = gt["annotations"][i]
            state = "crowd" if a.get("iscrowd") else "found" if r.gt_found[i] else "Miss" if r.gt_missed[i] \
                else "unmatched"
            truth.append({"box": _xyxy(a["bbox"]), "name": names[a["category_id"]], "state": state})
        rows = np.flatnonzero((dets[:, 0] == image_id) & (r.det_code != NOT_EVALUATED) & ~r.det_ignored)
        found = [{"box": _xyxy(dets[k, 1:5]), "name": names[int(dets[k, 6])], "score": float(dets[k, 5]),
                  "type": "TP" if r.det_code[k] == TP else MAIN_ERRORS[r.det_code[k]]} for k in rows]
        counts = ", ".join(f"{k} {v}" for k, v in w["counts"].items())
        caption = (f"#{w['rank']} image {image_id} ({w['file']}): about {w['AP50_lost']:.4f} AP50 lost\n"
                   f"errors: {counts}")
        panel = worst_image(load_image(by_id[image_id].file), truth, found, caption)
        save_image(panel, WORST_IMAGES / f"{w['rank']:02d}_{Path(w['file'] or str(image_id)).stem}.png")
        panels += [panel][:MOSAIC_MAX - len(panels)]   # only what the mosaic holds stays in memory
    save_image(mosaic(panels), WORST_IMAGES / "mosaic.png")


def _xyxy(b) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in b)
    return x, y, x + w, y + h
