"""What the stages share besides paths (pipeline/paths.py): how files are written (atomically), and loading
the prepared datasets. Stages import this (and pipeline/inference.py for the trained model), never each other."""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
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


def open_append(path: Path):
    """`path` opened for appending text (created if absent); a pipe, device or folder there is refused
    (UserError) at once, where a plain open() of a pipe waits for a reader forever."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise UserError(f"{path}: is a folder, not a file") from None
        if e.errno == errno.ENXIO:   # a pipe without a reader
            raise UserError(f"{path}: not a regular file (a pipe, device or socket)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path}: not a regular file (a pipe, device or socket)")
    return os.fdopen(fd, "a")


@contextmanager
def replaced_folder(path: Path) -> Iterator[Path]:
    """A new folder beside `path` to write into; once the block ends without error it takes `path`'s place
    (two renames), else it is removed and `path` stays as it was. Readers never see a half-written mix of
    old and new files, only the old folder, the new one or (between the renames) none. Folders left by a
    killed process (`.<name>-<pid>-...` of a dead pid) are removed first. A `path` that is a link (the data
    kept on another disk) stays one: the folder it points to is replaced. The new folder gets the permissions
    a plain mkdir would (the umask's), not a temp folder's private ones."""
    if path.is_symlink():
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob(f".{path.name}-*"):
        pid = old.name.split("-")[1] if old.name.count("-") >= 2 else ""
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    new = Path(tempfile.mkdtemp(prefix=f".{path.name}-{os.getpid()}-new-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(new, 0o777 & ~umask)
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


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts)."""
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
