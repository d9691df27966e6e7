"""Where a report goes: built in a staging folder beside `--out`, then moved in; files there that an earlier
`fcos-exp report` did not write (listed in `--out`/.fcos-exp-report) are never replaced or deleted."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fcos.files import atomic_write

from ..errors import UserError

MANIFEST = ".fcos-exp-report"   # the files (relative paths) the last report wrote into its folder
OWNED = ("report.md", "report.html", "assets")


def _written(out: Path) -> set[str]:
    """The manifest's names that a report can have written: paths under report.md, report.html or assets/,
    reached without leaving `out` (no "..", no absolute path, no linked folder on the way). A damaged or
    hostile manifest names nothing else, so publishing never deletes a file beside or outside the report."""
    try:
        names = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    return {n for n in names if isinstance(n, str) and _ours(out, n)} if isinstance(names, list) else set()


def _ours(out: Path, name: str) -> bool:
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or parts[0] not in OWNED or any(p in ("..", ".") for p in parts):
        return False
    return not any((out / Path(*parts[:i])).is_symlink() for i in range(1, len(parts)))


def _files(path: Path, root: Path) -> list[str]:
    if path.is_dir() and not path.is_symlink():
        return [str(p.relative_to(root)) for p in sorted(path.rglob("*")) if not p.is_dir() or p.is_symlink()]
    return [str(path.relative_to(root))] if path.exists() or path.is_symlink() else []


def claim(out: Path) -> None:
    """UserError when `out` holds a report.md, report.html or assets/ file an earlier report did not write."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")
    ours = _written(out)
    for name in OWNED:
        foreign = [f for f in _files(out / name, out) if f not in ours]
        if foreign:
            raise UserError(f"{out / foreign[0]}: exists and was not written by `fcos-exp report`; choose another "
                            "--out or move it (nothing was changed)")


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh folder beside `out` to build the report in; removed afterwards, whatever happens."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield stage
    except OSError as e:   # a failed write (a full disk) names no file, or a staging one: the report's folder
        if e.filename is None or str(e.filename).startswith(str(stage)):
            raise OSError(e.errno, f"{e.strerror} (writing the report)", str(out)) from None
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, out: Path) -> None:
    """Move the staged report into `out`: the earlier report's own files go, nothing else is touched."""
    claim(out)   # again: the folder may have changed while the report was built
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(_written(out), reverse=True):   # files before their folders
        path = out / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    for folder in sorted({(out / n).parent for n in _written(out)}, key=lambda p: -len(p.parts)):
        if folder != out and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    new = [f for name in OWNED for f in _files(stage / name, stage)]
    for name in new:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        _move(stage / name, out / name)
    (out / MANIFEST).write_text(json.dumps(new, indent=0))


def _move(src: Path, dst: Path) -> None:
    """Rename src to dst; where dst is on another filesystem (--out links to, or is, another disk's folder),
    copy it to a temp file there and rename that, so dst is never seen half written."""
    try:
        os.replace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        with open(src, "rb") as f, atomic_write(dst, "wb") as g:
            shutil.copyfileobj(f, g)
        src.unlink()
