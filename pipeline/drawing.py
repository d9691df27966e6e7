"""Pictures a person looks at: detections drawn on images, training curves, per-class AP."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_SIDE = 1024     # the long side of an image drawn in a figure: small images are enlarged up to it, larger reduced
MOSAIC_MAX = 16     # panels in a mosaic (the first ones): hundreds make an image viewers refuse (PIL: ~180 MP)
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128)]


def save_image(image: Image.Image, path: Path) -> None:
    """image written atomically in its extension's format: a full disk leaves no half image and names the file."""
    from fcos.files import atomic_write
    with atomic_write(path, "wb") as f:
        image.save(f, format=Image.registered_extensions().get(path.suffix.lower()))


def figure_scale(size: tuple[int, int], min_side: int) -> float:
    """The factor an image of `size` (w, h) is drawn at in a figure: a whole one enlarging its short side to
    `min_side` pixels (so that labels do not hide it), but never past MAX_SIDE on its long side, where a
    larger image is reduced (a 2 x 2000 strip or a 6000 x 4000 photo would otherwise take gigabytes)."""
    up = max(1, -(-min_side // max(1, min(size))))
    return min(up, MAX_SIDE / max(size))


def scaled(image: Image.Image, scale: float) -> Image.Image:
    """An RGB copy of image resized by `scale` (pixels kept sharp when enlarged)."""
    img = image.convert("RGB")
    if scale == 1:
        return img.copy()
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)


def mosaic(images: list[Image.Image], cols: int = 2) -> Image.Image:
    """The first MOSAIC_MAX images in a grid of `cols` columns, each in a cell of the largest one's size."""
    images = images[:MOSAIC_MAX]
    w, h = max(im.width for im in images), max(im.height for im in images)
    rows = -(-len(images) // cols)
    out = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for k, im in enumerate(images):
        out.paste(im, ((k % cols) * w, (k // cols) * h))
    return out


def draw_boxes(image: Image.Image, boxes, labels, classes: list[str], scores=None, min_side: int = 0) -> Image.Image:
    """A copy of image with each box outlined in its class colour and labelled 'class score'. min_side > 0: a
    figure, the image drawn at `figure_scale`; 0: at its own size (predict's output)."""
    scale = figure_scale(image.size, min_side) if min_side else 1
    img = scaled(image, scale)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    width = max(2, round(max(img.size) / 250))
    for i, (box, label) in enumerate(zip(boxes.tolist(), np.asarray(labels).tolist())):
        colour = PALETTE[int(label) % len(PALETTE)]
        d.rectangle(box, outline=colour, width=width)
        text = classes[int(label)] + ("" if scores is None else f" {float(scores[i]):.2f}")
        x, y = box[0], max(0, box[1] - 12)
        tb = d.textbbox((x, y), text, font=font)
        d.rectangle(tb, fill=colour)
        d.text((x, y), text, fill=(0, 0, 0), font=font)
    return img


def side_by_side(left: Image.Image, right: Image.Image, titles=("ground truth", "predictions")) -> Image.Image:
    w, h = left.size
    out = Image.new("RGB", (2 * w + 10, h + 18), (255, 255, 255))
    out.paste(left, (0, 18))
    out.paste(right, (w + 10, 18))
    d = ImageDraw.Draw(out)
    d.text((4, 3), titles[0], fill=(0, 0, 0))
    d.text((w + 14, 3), titles[1], fill=(0, 0, 0))
    return out


def read_steps(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def training_curves(steps: dict[str, np.ndarray], out_dir: Path) -> list[Path]:
    """final_loss.png, losses.png (each loss), lr.png; smoothed lines over the raw per-step values."""
    from .mpl import plt, save

    out_dir.mkdir(parents=True, exist_ok=True)
    x = steps["step"]
    written = []
    groups = (("final_loss", ["final_loss"]), ("losses", ["cls_loss", "reg_loss", "ctr_loss"]), ("lr", ["lr"]))
    for name, keys in groups:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        for k in keys:
            y = steps[k]
            line, = ax.plot(x, y, alpha=0.3 if len(y) > 20 else 1.0, label=None if len(y) > 20 else k)
            if len(y) > 20:
                win = max(5, len(y) // 30)
                smooth = np.convolve(y, np.ones(win) / win, mode="valid")
                ax.plot(x[win - 1:], smooth, color=line.get_color(), label=k)
        ax.set_xlabel("step")
        ax.set_ylabel(name.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(save(fig, out_dir / f"{name}.png"))
    return written


def per_class_bars(per_class: dict[str, float | None], out: Path, title: str = "AP50 per class") -> Path:
    from .mpl import plt, save

    names = list(per_class)
    vals = [per_class[n] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(names) + 2), 3.5), dpi=100)
    ax.bar(names, vals, color="#3b7dd8")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=60)
    return save(fig, out)
