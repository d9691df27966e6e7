"""COCO evaluation: fcos.coco_evaluate (faster-coco-eval, and its pycocotools backend) against pycocotools
used the usual way (COCO.loadRes + COCOeval), on the same few thousand images and detections, interleaved;
prints the speed ratios and checks the 12 stats agree.

    python benchmarks/bench_eval.py [--images 3000] [--rounds 2]
"""
from __future__ import annotations

import argparse

import numpy as np
from common import cpu_label, interleave, median

from fcos.coco_eval import STAT_NAMES, _quiet, coco_evaluate, load_gt


def synthetic(n_images: int, seed: int = 0):
    """VOC-like ground truth (1-8 boxes, 20 classes) and 100 detections per image: jittered truth + noise."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 500, "height": 375, "file_name": f"{i}.jpg"})
        k = rng.integers(1, 9)
        xy = rng.uniform(0, 300, (k, 2))
        wh = rng.uniform(10, 200, (k, 2))
        cats = rng.integers(1, 21, k)
        for b, c in zip(np.hstack((xy, wh)), cats):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": b.tolist(),
                         "area": float(b[2] * b[3]), "iscrowd": 0})
            j = b + rng.normal(0, 6, 4)
            dets.append([i, *j[:2], max(j[2], 1), max(j[3], 1), rng.uniform(0.3, 1), c])
        for _ in range(100 - k):
            b = np.concatenate((rng.uniform(0, 400, 2), rng.uniform(5, 150, 2)))
            dets.append([i, *b, rng.uniform(0, 0.6), rng.integers(1, 21)])
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 21)]}
    return gt, np.array(dets, dtype=np.float64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    gt, dets = synthetic(args.images)
    results = {}

    def run(backend):
        return lambda: results.__setitem__(backend, coco_evaluate(gt, dets, backend))

    def plain_pycocotools():
        from pycocotools.cocoeval import COCOeval
        coco_gt = load_gt(gt, "pycocotools")
        ev = COCOeval(coco_gt, _quiet(lambda: coco_gt.loadRes(dets)), "bbox")
        _quiet(ev.evaluate)
        _quiet(ev.accumulate)
        _quiet(ev.summarize)
        results["plain"] = dict(zip(STAT_NAMES, ev.stats))

    t = interleave({"ours_faster": run("faster"), "ours_pycocotools": run("pycocotools"),
                    "pycocotools_loadRes": plain_pycocotools}, args.rounds, warmup=0)
    worst = max(abs(results[a][s] - results["plain"][s]) for s in STAT_NAMES for a in ("faster", "pycocotools"))
    label = cpu_label()
    print(f"{label} {args.images} images, {len(dets)} detections, {len(gt['annotations'])} boxes; medians of "
          f"{args.rounds}")
    for name, times in t.items():
        print(f"  {name:20s} {median(times):7.2f} s")
    base = median(t["pycocotools_loadRes"])
    print(f"  coco_evaluate (faster-coco-eval) vs pycocotools with loadRes: {base / median(t['ours_faster']):.1f}x  "
          f"{label}")
    print(f"  coco_evaluate backends, faster-coco-eval vs pycocotools:    "
          f"{median(t['ours_pycocotools']) / median(t['ours_faster']):.1f}x  {label}")
    print(f"  largest difference over the 12 stats: {worst:.2e} (AP50 {results['faster']['AP50']:.4f})")


if __name__ == "__main__":
    main()
