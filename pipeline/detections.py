"""The test detections every evaluation keeps, so that two runs on the same test split can be compared
later (`fcos-exp compare`, the report) without running a model: metrics/detections.json.gz, COCO results
(image_id, category_id, bbox x y w h, score, as `pycocotools.COCO.loadRes` reads them), gzip; beside it,
in metrics/eval.json and as the MLflow tag GT_TAG, the sha256 of the ground truth they were scored on
(`fcos.bootstrap.gt_hash`). Also the bootstrap standard errors of AP and AP50 that evaluate logs."""
from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np

from fcos.files import atomic_write

from .errors import UserError
from .paths import TEST_DETECTIONS

ARTIFACT_FOLDER = "metrics"                            # the MLflow artifact: metrics/detections.json.gz
ARTIFACT = f"{ARTIFACT_FOLDER}/{TEST_DETECTIONS.name}"
GT_TAG = "test_gt_sha256"
SE_METRICS = ("AP", "AP50")   # logged as test/<name>_se


def write_detections(path: Path, detections: np.ndarray) -> None:
    """detections [N, 7] (image_id, x, y, w, h, score, category_id) as gzipped COCO results; floats exactly
    as scored (json keeps float64), and no time stamp in the gzip header, so equal detections give equal
    bytes (DVC sees an identical rerun as unchanged)."""
    rows = [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": r[1:5], "score": r[5]}
            for r in np.asarray(detections, np.float64).reshape(-1, 7).tolist()]
    data = gzip.compress(json.dumps(rows, separators=(",", ":")).encode(), compresslevel=6, mtime=0)
    with atomic_write(path, "wb") as f:
        f.write(data)


def read_detections(path: Path) -> np.ndarray:
    """[N, 7] from a file written by write_detections (or any gzipped COCO box results)."""
    try:
        with gzip.open(path, "rt") as f:
            rows = json.load(f)
        det = np.array([[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in rows], np.float64)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not gzipped COCO detection results ({type(e).__name__}: {e})") from None
    return det.reshape(-1, 7)


def keep_detections(detections: np.ndarray, gt_path: Path, console=None) -> dict:
    """Write TEST_DETECTIONS and return what evaluate adds to metrics/eval.json: GT_TAG and AP_se, AP50_se
    (bootstrap standard errors over the test images, fcos.bootstrap.RESAMPLES resamples, seed SEED; None
    with fewer than 2 images)."""
    from fcos.bootstrap import RESAMPLES, SEED, bootstrap, gt_hash, match_table, standard_errors

    start = time.perf_counter()
    write_detections(TEST_DETECTIONS, detections)
    gt = json.loads(Path(gt_path).read_text())
    table = match_table(gt, detections)
    se = standard_errors(bootstrap(table, RESAMPLES, SEED))
    out = {GT_TAG: gt_hash(gt), **{f"{k}_se": se[k] for k in SE_METRICS}}
    if console is not None:
        spread = ", ".join(f"{k} ±{se[k]:.3f}" for k in SE_METRICS if se[k] is not None) or "none (under 2 images)"
        console.print(f"bootstrap standard error over {table.n_images} test images ({RESAMPLES} resamples): "
                      f"{spread} ({time.perf_counter() - start:.1f} s); detections kept in {TEST_DETECTIONS}")
    return out
