"""Checkpoints: written to a temp file and renamed, loaded with weights_only=True."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import FCOSConfig
from .model import FCOS


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomic save: a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for damaged or foreign files
        raise ValueError(f"{path}: not a readable fcos-exp checkpoint ({type(e).__name__}: {str(e)[:120]})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[FCOS, list[str]]:
    """The trained model (eval mode, no pretrained download: weights come from the checkpoint) and class names."""
    ckpt = load_checkpoint(path, device)
    cfg = FCOSConfig.from_dict({**ckpt["model_config"], "weights": None})
    model = FCOS.from_config(cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), list(ckpt["classes"])
