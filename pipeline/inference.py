"""The trained model as evaluate, visualize and predict run it: the checkpoint eval.checkpoint names, made for
inference (fcos.inference.for_inference), on eval.device, under eval.amp."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .paths import BEST_MODEL, MODEL

if TYPE_CHECKING:
    from .params_schema import Params

CHECKPOINTS = {"last": MODEL, "best": BEST_MODEL}   # eval.checkpoint: what evaluate, visualize and predict load


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


def trained_path(params: Params) -> Path:
    """The checkpoint eval.checkpoint names."""
    return CHECKPOINTS[params.eval.checkpoint]


def load_trained(params: Params, path: Path | None = None, device=None) -> Trained:
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
    model.set_decoding(**asdict(params.decode))
    return Trained(for_inference(model, winograd=params.eval.winograd), list(ckpt["classes"]), device,
                   resolve_amp(params.eval.amp, device))


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
