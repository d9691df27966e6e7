"""Stage visualize: training curves, per-class AP and detection images (ground truth beside predictions)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..artifacts import load_dataset
from ..drawing import (
    MOSAIC_MAX,
    draw_boxes,
    mosaic,
    per_class_bars,
    read_steps,
    save_image,
    side_by_side,
    training_curves,
)
from ..eval_analysis import class_thresholds
from ..inference import load_trained
from ..paths import DETECTIONS, EVAL_METRICS, STEPS_CSV, TRAINING_FIGURES
from ..tracking import Tracker, tracking_uri

if TYPE_CHECKING:
    from ..params_schema import Params

MIN_SIDE = 256   # panels are drawn at least this large: the embedded 128-px images at 256


def pick_images(records, n: int) -> list[int]:
    """Indices of test images: half with a single object, the rest with the most objects."""
    singles = [i for i, r in enumerate(records) if len(r.boxes) == 1]
    crowded = sorted(range(len(records)), key=lambda i: (-len(records[i].boxes), i))
    chosen = singles[: n // 2]
    chosen += [i for i in crowded if i not in chosen][: n - len(chosen)]
    return chosen


def run(params: Params, console) -> dict:
    import torch

    from fcos.data import load_image

    TRAINING_FIGURES.mkdir(parents=True, exist_ok=True)
    DETECTIONS.mkdir(parents=True, exist_ok=True)
    figures = training_curves(read_steps(STEPS_CSV), TRAINING_FIGURES) if STEPS_CSV.is_file() else []
    if EVAL_METRICS.is_file():
        figures.append(per_class_bars(json.loads(EVAL_METRICS.read_text())["per_class_AP50"],
                                      TRAINING_FIGURES / "per_class_ap50.png"))
    trained = load_trained(params)
    classes = trained.classes
    test_ds = load_dataset("test")
    # [K]: the number, or each class's F1-optimal threshold (metrics/pr.json)
    thresh = torch.as_tensor(class_thresholds(params.visualize.score_thresh, classes), device=trained.device)
    panels = []
    for i in pick_images(test_ds.records, params.visualize.num_images):
        r = test_ds.records[i]
        image = load_image(r.file)
        det = trained.detect([test_ds[i][0]])[0]
        keep = det["scores"] >= thresh[det["labels"]]
        gt = draw_boxes(image, r.boxes, r.labels, classes, min_side=MIN_SIDE)
        pred = draw_boxes(image, det["boxes"][keep].cpu(), det["labels"][keep].cpu(), classes,
                          det["scores"][keep].cpu(), min_side=MIN_SIDE)
        panel = side_by_side(gt, pred)
        save_image(panel, DETECTIONS / f"{r.file.stem}.png")
        panels += [panel][:MOSAIC_MAX - len(panels)]   # only what the mosaic holds stays in memory
    if panels:
        save_image(mosaic(panels), DETECTIONS / "mosaic.png")
    with Tracker(params, new_run=False) as tracker:
        tracker.log_artifact(TRAINING_FIGURES, "figures")
        tracker.log_artifact(DETECTIONS, "detections")
        run_id = tracker.run_id
    console.print(f"figures: {TRAINING_FIGURES}/  detections: {DETECTIONS}/ (start with {DETECTIONS / 'mosaic.png'})")
    if run_id:
        console.print(f"MLflow run {run_id} in {tracking_uri()}: `mlflow ui --backend-store-uri {tracking_uri()}`")
    return {"figures": [str(f) for f in figures], "detections": len(panels)}
