"""Box and path checks shared by the readers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError, DataReport


def clean_boxes(boxes: np.ndarray, width: int, height: int, file: object,
                report: DataReport) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes [N, 4] to the image (counted) and drop degenerate ones (counted).
    Returns the kept boxes and the keep mask [N]."""
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    clipped[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    for b in boxes[~keep]:
        report.problem("degenerate box", file, f"box {b.tolist()} is empty inside the {width}x{height} image (dropped)")
    moved = keep & np.any(clipped != boxes, axis=1)
    for b in boxes[moved]:
        report.problem("box outside image", file, f"box {b.tolist()} exceeds the {width}x{height} image (clipped)")
    return clipped[keep], keep


def safe_path(folder: Path, name: str, source: object) -> Path:
    """folder / name, refusing names that leave the folder (absolute paths, '..')."""
    folder = folder.resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder):
        raise DataError(f"{source}: file name {name!r} points outside {folder}")
    return path
