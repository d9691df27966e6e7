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
        code = getattr(e, "errno", None) or (errno.ENOSPC if _full(path) else errno.EIO)
        why = os.strerror(code) if code == errno.ENOSPC or isinstance(e, OSError) else \
            re.sub(r"\[enforce fail at [^\]]*\]\s*", "", str(e).splitlines()[0])[:120]
        kept = "the previous checkpoint is kept" if existed else "there is no earlier checkpoint"
        raise OSError(code, f"checkpoint not written ({why}); {kept}", str(path)) from None


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
