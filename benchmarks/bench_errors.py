"""What the error analysis adds to evaluate: fcos.tide (TIDE breakdown) and fcos.voc_eval (VOC07 mAP) against
the COCO evaluation (fcos.coco_evaluate, faster-coco-eval) on the same synthetic detections, interleaved;
prints each median and the ratios. With --tidecv N, also tidecv 1.0.1 itself on the first N images (it is
pure Python: minutes on thousands of images) and the largest difference between the two.

    python benchmarks/bench_errors.py [--images 5000] [--rounds 3] [--tidecv 300]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from bench_eval import synthetic
from common import cpu_label, interleave, median

from fcos.coco_eval import coco_evaluate
from fcos.tide import MAIN_ERRORS, tide
from fcos.voc_eval import voc_evaluate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tidecv", type=int, default=0, help="images to run tidecv itself on (0: skip)")
    args = ap.parse_args()
    gt, dets = synthetic(args.images)
    results = {}
    t = interleave({"coco_evaluate": lambda: results.__setitem__("coco", coco_evaluate(gt, dets)),
                    "tide": lambda: results.__setitem__("tide", tide(gt, dets)),
                    "voc07": lambda: results.__setitem__("voc07", voc_evaluate(gt, dets, "voc07"))},
                   args.rounds, warmup=0)
    label = cpu_label()
    print(f"{label} {args.images} images, {len(dets)} detections, {len(gt['annotations'])} boxes; medians of "
          f"{args.rounds}, interleaved")
    for name, times in t.items():
        print(f"  {name:14s} {median(times):7.2f} s")
    coco = median(t["coco_evaluate"])
    print(f"  TIDE breakdown / COCO evaluation: {median(t['tide']) / coco:.2f}  {label}")
    print(f"  VOC07 mAP / COCO evaluation:      {median(t['voc07']) / coco:.2f}  {label}")
    r = results["tide"]
    print(f"  AP50: COCO {results['coco']['AP50']:.4f}, TIDE {r.ap:.4f}, VOC07 {results['voc07']['mAP']:.4f}; "
          + ", ".join(f"{k} {v:.4f}" for k, v in r.main.items()))
    if args.tidecv:
        _against_tidecv(gt, dets, args.tidecv, label)


def _against_tidecv(gt: dict, dets: np.ndarray, n: int, label: str) -> None:
    from tidecv import TIDE, Data
    ids = {im["id"] for im in gt["images"][:n]}
    small = {"images": gt["images"][:n], "categories": gt["categories"],
             "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    sub = dets[np.isin(dets[:, 0], list(ids))]
    start = time.perf_counter()
    truth, preds = Data("gt"), Data("dets")
    for im in small["images"]:
        truth.add_image(im["id"], str(im["id"]))
    for a in small["annotations"]:
        truth.add_ground_truth(a["image_id"], a["category_id"], a["bbox"])
    for d in sub:
        preds.add_detection(int(d[0]), int(d[6]), float(d[5]), list(map(float, d[1:5])))
    t = TIDE()
    t.evaluate(truth, preds, mode=TIDE.BOX)
    main = t.get_main_errors()["dets"]
    ref_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ours = tide(small, sub)
    seconds = time.perf_counter() - start
    worst = max(abs(ours.main[k] * 100 - main[k]) for k in MAIN_ERRORS)
    print(f"  tidecv on {n} images: {ref_seconds:.1f} s, fcos.tide {seconds:.2f} s ({ref_seconds / seconds:.0f}x); "
          f"largest dAP difference {worst:.1e} points  {label}")


if __name__ == "__main__":
    main()
