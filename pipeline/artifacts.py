"""What the stages share besides paths (pipeline/paths.py): how files are written (atomically), and loading
what an earlier stage wrote (the prepared datasets, the trained model). Stages import this, never each other."""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fcos.files import atomic_write

from .errors import UserError
from .paths import BEST_MODEL, MODEL, PREPARED

CHECKPOINTS = {"last": MODEL, "best": BEST_MODEL}   # eval.checkpoint: what evaluate, visualize and predict load


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
        if pid.isdigit() and not _alive(int(pid)):
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


@dataclass
class Trained:
    """A trained model made for inference (fcos.inference.for_inference: params' decode section and
    eval.winograd applied) on eval.device, run under eval.amp as resolved there (`amp`)."""

    model: Any
    classes: list[str]
    device: Any
    amp: str

    def detect(self, images: list) -> list[dict]:
        """Detections of images [3, H, W] (any device), as FCOS returns them, on self.device."""
        import torch

        from fcos.engine import autocast_for
        with torch.inference_mode(), autocast_for(self.device, self.amp)():
            return self.model([im.to(self.device) for im in images])


def trained_path(params: dict) -> Path:
    """The checkpoint eval.checkpoint names."""
    return CHECKPOINTS[params["eval"]["checkpoint"]]


def load_trained(params: dict, path: Path | None = None, device=None) -> Trained:
    """The checkpoint at `path` (default the one eval.checkpoint names) ready for inference, on `device`
    (default eval.device). models/best.pt that no validation chose (its `best` record has no epoch) is refused."""
    from fcos.checkpoint import load_checkpoint, model_from_checkpoint
    from fcos.engine import resolve_amp
    from fcos.inference import for_inference

    from .params import device_of
    path = Path(path or trained_path(params))
    if not path.is_file():
        raise UserError(f"{path}: not found; run `fcos-exp train` (or `dvc repro`) first")
    device = device or device_of(params, "eval")
    ckpt = load_checkpoint(path, device)
    best = ckpt.get("best") or {}
    if path.resolve() == BEST_MODEL.resolve():
        if best.get("epoch") is None:
            metric = best.get("metric", "value")
            every = (ckpt.get("train_config") or {}).get("eval_every") or 0
            validated = every and (ckpt.get("epoch") or 0) >= every   # validation ran, but gave no value
            fix = (f"validation gave no {metric} value (the validation split holds no object it measures): choose "
                   "another train.best_metric and train again" if validated else
                   "set train.eval_every > 0 (validation) and train again")
            raise UserError(f"{path}: training recorded no validation {metric}, so it holds the last epoch, not a "
                            f"best one: {fix}, or set eval.checkpoint: last")
        _check_best_of_last(path, ckpt)
    model = model_from_checkpoint(ckpt, device)
    model.set_decoding(**params["decode"])
    return Trained(for_inference(model, winograd=params["eval"]["winograd"]), list(ckpt["classes"]), device,
                   resolve_amp(params["eval"]["amp"], device))


def _check_best_of_last(path: Path, ckpt: dict) -> None:
    """UserError when the best checkpoint is not the best epoch of the training models/model.pt holds: one of
    an earlier training, left by a training killed (or stopped by a full disk) before it wrote its own."""
    import torch

    from fcos.checkpoint import best_mismatch
    if not MODEL.is_file():
        return
    try:
        last = torch.load(MODEL, map_location="cpu", weights_only=True, mmap=True)   # reads only what is compared
    except Exception:   # a damaged last checkpoint says nothing about this one
        return
    why = best_mismatch(ckpt, last) if isinstance(last, dict) else None
    if why:
        raise UserError(f"{path}: not the best epoch of the training in {MODEL} ({why}): `fcos-exp train --resume` "
                        "finishes that training and writes its best epoch, or set eval.checkpoint: last")
