"""fcos: a compact FCOS detector in plain PyTorch + torchvision."""
from .config import FCOSConfig
from .model import FCOS

__all__ = ["FCOS", "FCOSConfig"]
