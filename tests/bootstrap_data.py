"""Synthetic COCO ground truth and detections for the bootstrap tests and benchmark: boxes of several classes
(some crowd), detections near them (some of the wrong class), false positives, rounded scores (ties)."""
from __future__ import annotations

import numpy as np


def synthetic(n_images: int = 60, classes=("a", "b", "c", "d"), seed: int = 0, crowd: float = 0.05,
              quality: float = 0.8, empty_class: bool = False, per_image: int = 0,
              det_seed: int | None = None) -> tuple[dict, np.ndarray]:
    """(gt dict, detections [N, 7]: image_id, x, y, w, h, score, category_id). The ground truth depends on
    `seed` (and n_images, classes, crowd, empty_class) only; the detections on `det_seed` (default: seed).
    `quality` in (0, 1]: how close and how often of the right class; `empty_class`: the last class has no
    ground truth; `per_image`: low-score false positives added up to this many detections per image."""
    rng = np.random.default_rng(seed)
    n_cls = len(classes) - int(empty_class)
    images, anns = [], []
    for i in range(n_images):
        iid = 1000 + 3 * i                                     # ids neither contiguous nor from 0
        images.append({"id": iid, "file_name": f"{i}.jpg", "width": 200, "height": 200})
        for _ in range(rng.integers(0, 6)):
            w, h = rng.uniform(5, 80, 2)
            x, y = rng.uniform(0, 200 - w), rng.uniform(0, 200 - h)
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": int(rng.integers(1, n_cls + 1)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < crowd)})
    rng = np.random.default_rng(seed if det_seed is None else det_seed)
    dets = []
    for img in images:
        iid, start = img["id"], len(dets)
        for a in (a for a in anns if a["image_id"] == iid):
            x, y, w, h = a["bbox"]
            c = a["category_id"]
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, (1 - quality) * 0.3, 4) * [w, h, w, h]
                cc = c if rng.random() < quality else int(rng.integers(1, len(classes) + 1))
                dets.append([iid, x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3]),
                             round(rng.uniform(0.2, 1.0) * (quality + 0.2 * rng.random()), 2), cc])
        for _ in range(max(int(rng.integers(0, 8)), per_image - (len(dets) - start))):
            w, h = rng.uniform(5, 80, 2)
            dets.append([iid, rng.uniform(0, 120), rng.uniform(0, 120), w, h, round(rng.uniform(0.05, 0.6), 2),
                         int(rng.integers(1, len(classes) + 1))])
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)]}
    return gt, np.array(dets, np.float64).reshape(-1, 7)


def log_run(client, experiment_id: str, name: str, params: dict, gt: dict, det: np.ndarray, folder,
            tags: dict | None = None) -> str:
    """A finished MLflow run as the pipeline's evaluate leaves it, without a model: params (as Tracker logs
    them), the test-data hash tag, test/AP, test/AP50 and per-class AP50 of `det` on `gt`, and the detections
    artifact, and the standard errors of AP and AP50 (200 resamples). Returns the run id."""
    from pathlib import Path

    from mlflow.entities import Metric, Param

    from fcos.bootstrap import bootstrap, gt_hash, match_table, standard_errors
    from pipeline.detections import ARTIFACT_FOLDER, GT_TAG, SE_METRICS, write_detections
    from pipeline.paths import TEST_DETECTIONS

    run_id = client.create_run(experiment_id, run_name=name, tags={GT_TAG: gt_hash(gt), **(tags or {})}).info.run_id
    replicates = bootstrap(match_table(gt, det), 200)
    se = standard_errors(replicates)
    metrics = [Metric(f"test/{k}", v, 0, 0) for k, v in replicates.full.items() if v is not None]
    metrics += [Metric(f"test/{k}_se", se[k], 0, 0) for k in SE_METRICS]
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics)
    path = Path(folder) / run_id / TEST_DETECTIONS.name
    write_detections(path, det)
    client.log_artifact(run_id, str(path), ARTIFACT_FOLDER)
    client.set_terminated(run_id, "FINISHED")
    return run_id
