"""What the stages share besides paths (pipeline/paths.py): how files are written (atomically), and loading
the prepared datasets. Stages import this (and pipeline/inference.py for the trained model), never each other."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fcos.files import atomic_write

from .errors import UserError
from .paths import PREPARED

if TYPE_CHECKING:
    pass

def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2))


@contextmanager
def replaced_folder(path: Path) -> Iterator[Path]:
    """A new folder beside `path` to write into; once the block ends without error it takes `path`'s place
    (two renames), else it is removed and `path` stays as it was. Readers never see a half-written mix of
    old and new files, only the old folder, the new one or (between the renames) none. Folders left by a
    killed process (`.<name>-<pid>-...` of a dead pid) are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f".{path.name}-*"):
        pid = old.name.split("-")[1] if old.name.count("-") >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    new = Path(tempfile.mkdtemp(prefix=f".{path.name}-{os.getpid()}-new-", dir=path.parent))
    try:
        yield new
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    trash = path.parent / f".{path.name}-{os.getpid()}-old-{new.name.rsplit('-', 1)[1]}"
    if path.exists():
        os.replace(path, trash)
    os.replace(new, path)
    shutil.rmtree(trash, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def load_dataset(split: str, **kwargs):
    """The prepared COCO json of a split (train, val, test) as a CocoDataset; kwargs go to CocoDataset.
    prepare wrote it whole, so any problem reading it (an image deleted since, a file edited) means the
    prepared data is damaged: UserError, rather than training or scoring on what is left."""
    from fcos.data import CocoDataset, DataReport
    path = PREPARED / f"{split}.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; run `fcos-exp prepare` (or `dvc repro`) first")
    report = DataReport()
    dataset = CocoDataset(path, report=report, **kwargs)
    if not report.ok:
        raise UserError(f"{path}: the prepared {split} split is damaged ({report.summary().split(': ', 1)[-1]}; "
                        f"first: {report.lines[0]}); run `fcos-exp prepare` again")
    return dataset
