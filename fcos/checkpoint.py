"""Checkpoints: tensors on the CPU (written on a GPU, they load anywhere), written to a temp file and renamed,
loaded with weights_only=True. `fit` writes two: the last epoch's, with everything needed to resume, and the
best validated epoch's weights (`weights_checkpoint`, no optimizer state), each with the `best` record."""
from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import torch

from .config import FCOSConfig
from .errors import InputError
from .files import atomic_write
from .model import FCOS

CHECKPOINT_KEYS = ("model", "model_config", "classes")   # + epoch, global_step, optimizer... to resume


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def weights_checkpoint(model: FCOS, classes: list[str], **meta) -> dict:
    """The weights, model config and class names, plus `meta` (epoch, global_step, best, ...): what loads a model.
    Without optimizer state it cannot be resumed (models/best.pt); `fit` adds that state for the last one."""
    return {"model": model.state_dict(), "model_config": model.config.to_dict(), "classes": list(classes), **meta}


def best_mismatch(best: dict, last: dict) -> str | None:
    """Why the checkpoint `best` is not the best epoch the last checkpoint `last` of a training records (None
    when it is): its `best` record (metric, epoch, value) differs, or the best epoch is the last one and the
    weights differ (a best checkpoint of an earlier training can carry the same record). `last` may be
    loaded with mmap: only the weights of such an epoch are read."""
    want, have = last.get("best") or {}, best.get("best") or {}
    key = lambda r: (r.get("metric"), r.get("epoch"), r.get("value"))
    if key(have) != key(want):
        held = f"epoch {have.get('epoch')} ({have.get('metric')} {have.get('value')})" if have else "no best record"
        wanted = f"epoch {want['epoch']} ({want['metric']} {want['value']})" if want.get("epoch") else \
            "no validated epoch yet"
        return f"it holds {held}, the training of the last checkpoint records {wanted}"
    if want.get("epoch") == last.get("epoch") and not _same_weights(best.get("model", {}), last.get("model", {})):
        return (f"it holds other weights than epoch {want['epoch']} of the last checkpoint, the best one it records "
                "(an earlier training's)")
    return None


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v.to(b[k].device), b[k]) for k, v in a.items())


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomic save of `state` with every tensor on the CPU: a crash mid-write leaves the previous checkpoint
    intact, and a plain torch.load(path, weights_only=True) reads it on a machine without a GPU. A failed
    write (a full disk) is an OSError naming the file and saying whether an earlier checkpoint is kept."""
    path = Path(path)
    existed = path.is_file()
    try:
        with atomic_write(path, "wb") as f:
            torch.save(_to_cpu(state), f)
    except (RuntimeError, OSError) as e:   # torch reports a failed write as RuntimeError ("[enforce fail at ...")
        e = _os_error(e)
        code = getattr(e, "errno", None) or (errno.ENOSPC if _full(path) else errno.EIO)
        why = os.strerror(code) if code == errno.ENOSPC or isinstance(e, OSError) else \
            re.sub(r"\[enforce fail at [^\]]*\]\s*", "", str(e).splitlines()[0])[:120]
        kept = "the previous checkpoint is kept" if existed else "there is no earlier checkpoint"
        raise OSError(code, f"checkpoint not written ({why}); {kept}", str(path)) from None


def _os_error(e: BaseException) -> BaseException:
    """The OSError behind torch's RuntimeError, when the write that failed was Python's (it is the context of
    the RuntimeError: "unexpected pos ..." says nothing of a full disk), else `e`."""
    seen = e
    for _ in range(8):   # a short chain; a cycle stops here
        if seen is None or isinstance(seen, OSError):
            break
        seen = seen.__cause__ or seen.__context__
    return seen if isinstance(seen, OSError) else e


def _full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        return False


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for damaged or foreign files
        raise InputError(f"{path}: not a readable fcos-exp checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        tensors = isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values())
        what = "a plain state dict" if tensors else type(ckpt).__name__
        raise InputError(f"{path}: not an fcos-exp checkpoint ({what}, without {', '.join(missing)})")
    return ckpt


def model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu") -> FCOS:
    """The model of a loaded checkpoint, in eval mode (no pretrained download: the weights are the checkpoint's)."""
    model = FCOS(FCOSConfig.from_dict({**ckpt["model_config"], "weights": None}))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[FCOS, list[str]]:
    """The trained model (eval mode) and its class names."""
    ckpt = load_checkpoint(path, device)
    return model_from_checkpoint(ckpt, device), list(ckpt["classes"])
