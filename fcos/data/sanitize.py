"""Box, path and file checks shared by the readers."""
from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

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
    """folder / name for a name read from annotation text. The name is checked as text, never by following
    links: absolute names, '..' and NUL bytes are refused (DataError naming `source`), while links that the
    dataset itself holds (e.g. a DVC checkout with cache.type symlink) are followed when the file is opened."""
    if "\0" in name:
        raise DataError(f"{source}: file name {name!r} contains a NUL byte")
    parts = PurePosixPath(name).parts
    if not parts:
        raise DataError(f"{source}: empty file name")
    if parts[0] == "/" or ".." in parts:
        raise DataError(f"{source}: file name {name!r} points outside {folder}")
    return Path(folder).joinpath(*parts)


def check_regular(path: Path, what: str = "file") -> None:
    """DataError unless `path` (links followed) is a regular file: a FIFO, device or folder named like a
    dataset file would block or fail on open."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a folder, FIFO or device)")


def read_text(path: Path, what: str = "file") -> str:
    """The UTF-8 text of a regular file (a leading BOM dropped); DataError naming the file otherwise."""
    check_regular(path, what)
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
