"""Image loading that turns any mode PIL opens (L, P, RGBA, CMYK, I;16, ...) into RGB, EXIF-rotated.

Only regular files are opened (a FIFO named like an image would block), and images above `MAX_PIXELS`
are refused from their header, before decoding: a small PNG can hold 100 megapixels (~2 GB as tensors).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError
from .sanitize import check_regular

MAX_PIXELS = 50_000_000   # width * height; raise it (fcos.data.images.MAX_PIXELS) for larger photographs


def _open(path: str | Path) -> Image.Image:
    """PIL image of a regular file whose header size is within MAX_PIXELS (not decoded yet)."""
    check_regular(Path(path), "image file")
    with warnings.catch_warnings():   # PIL warns above 89 megapixels; the limit below decides
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise DataError(f"{path}: image too large ({w}x{h} = {w * h / 1e6:.0f} megapixels; "
                        f"the limit is {MAX_PIXELS / 1e6:.0f}, fcos.data.images.MAX_PIXELS)")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):   # 16/32-bit grey: scale to 8 bit by the image's range
        a = np.asarray(img, dtype=np.float64)
        hi = a.max() if a.max() > 255 else 255.0
        img = Image.fromarray((a / hi * 255).round().astype(np.uint8))
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open, fully decode, apply the EXIF orientation and convert to RGB; DataError names the file."""
    try:
        with _open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)   # a copy, or the image turned: either outlives the file
            return img if img.mode == "RGB" else _to_rgb(img)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image PIL can read") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:   # truncated or corrupt data
        raise DataError(f"{path}: unreadable image ({e})") from None


def image_size(path: str | Path, verify: bool = False) -> tuple[int, int]:
    """(width, height) after EXIF orientation: from the header, or with verify=True by decoding the whole
    image (which finds truncated and corrupt files)."""
    if verify:
        return load_image(path).size
    try:
        with _open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float32 [3, H, W] in [0, 1]."""
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return a.permute(2, 0, 1).float().div_(255)
