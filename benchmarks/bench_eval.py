"""COCO evaluation: faster-coco-eval against pycocotools on the same few thousand images and detections,
interleaved; prints the speed ratio and checks the 12 stats agree.

    python benchmarks/bench_eval.py [--images 3000] [--rounds 2]
"""
from __future__ import annotations

import argparse

import numpy as np

from common import interleave, median
from fcos.coco_eval import STAT_NAMES, coco_evaluate


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

    t = interleave({"faster": run("faster"), "pycocotools": run("pycocotools")}, args.rounds, warmup=0)
    worst = max(abs(results["faster"][s] - results["pycocotools"][s]) for s in STAT_NAMES)
    print(f"{args.images} images, {len(dets)} detections, {len(gt['annotations'])} boxes; medians of {args.rounds}")
    for name, times in t.items():
        print(f"  {name:12s} {median(times):7.2f} s")
    print(f"  speed ratio faster-coco-eval / pycocotools: {median(t['pycocotools']) / median(t['faster']):.1f}x")
    print(f"  largest difference over the 12 stats: {worst:.2e} (AP50 {results['faster']['AP50']:.4f})")


if __name__ == "__main__":
    main()
