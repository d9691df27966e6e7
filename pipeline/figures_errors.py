"""Figures of the error analysis: the TIDE bars (overall) and heat map (per class) of plots/eval/errors.png,
and the worst images: ground truth beside the detections, every error boxed in its type's colour."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcos.tide import MAIN_ERRORS, SPECIAL_ERRORS

from .drawing import figure_scale, scaled, side_by_side
from .mpl import plt, save

# One colour per outcome, the same in the bars, the heat map's labels and the drawn boxes.
COLOURS = {"TP": (60, 180, 75), "Cls": (230, 25, 75), "Loc": (245, 130, 48), "Both": (145, 30, 180),
           "Dupe": (240, 50, 230), "Bkg": (0, 130, 200), "Miss": (255, 200, 0), "FalsePos": (120, 120, 120),
           "FalseNeg": (70, 70, 70), "unmatched": (200, 200, 200), "crowd": (150, 150, 150)}
MEANING = {"TP": "true positive", "Cls": "wrong class", "Loc": "loose box", "Both": "wrong class, loose box",
           "Dupe": "duplicate", "Bkg": "background", "Miss": "missed box"}
GT_LEGEND = {"TP": "found", "Miss": "missed (Miss)", "unmatched": "not found, but a Cls or Loc error points at it",
             "crowd": "crowd region (ignored)"}
MIN_SIDE = 320        # worst images are drawn at least this large (the embedded 128-px ones x3; drawing.figure_scale)
MAX_ERRORS_DRAWN = 12  # error detections drawn per image, best scores first (the ones costing most)


def _rgb(name: str) -> tuple[float, float, float]:
    return tuple(v / 255 for v in COLOURS[name])


def errors_figure(errors: dict, path: Path) -> Path:
    """Left: dAP50 of each main and special error type (what fixing it would add), overall. Right: the main
    types per class as a heat map (n/a cells blank)."""
    classes = list(errors["per_class"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, max(3.8, 0.32 * len(classes) + 1.5)), dpi=100,
                                   gridspec_kw={"width_ratios": [1, 1.3]})
    names = [*MAIN_ERRORS, *SPECIAL_ERRORS]
    values = [errors["main"].get(n) if n in MAIN_ERRORS else errors["special"].get(n) for n in names]
    y = np.arange(len(names))[::-1]
    ax1.barh(y, [v or 0 for v in values], color=[_rgb(n) for n in names])
    top = max([v for v in values if v] + [1e-3])
    for yi, v in zip(y, values):
        ax1.text((v or 0) + 0.01 * top, yi, "n/a" if v is None else f"{v:.3f}", va="center", fontsize=8)
    ax1.set_yticks(y, [f"{n} ({MEANING[n]})" if n in MEANING else n for n in names], fontsize=8)
    ax1.axhline(len(SPECIAL_ERRORS) - 0.5, color="black", lw=0.6)
    ax1.set_xlim(0, top * 1.25)
    ap = errors["AP50"]
    ax1.set(xlabel="AP50 gained if fixed (dAP50)",
            title=f"TIDE errors, all classes (AP50 {'n/a' if ap is None else f'{ap:.3f}'})")
    grid = np.array([[np.nan if (v := errors["per_class"][c]["main"][n]) is None else v for n in MAIN_ERRORS]
                     for c in classes]).reshape(len(classes), len(MAIN_ERRORS))
    finite = grid[np.isfinite(grid)]
    im = ax2.imshow(grid, cmap="Reds", vmin=0, vmax=max(finite.max() if finite.size else 0, 1e-3), aspect="auto")
    if grid.size <= 600:
        for (i, j), v in np.ndenumerate(grid):
            ax2.text(j, i, "n/a" if np.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=7)
    ax2.set_xticks(range(len(MAIN_ERRORS)), MAIN_ERRORS, fontsize=8)
    for tick, n in zip(ax2.get_xticklabels(), MAIN_ERRORS):
        tick.set_color(_rgb(n))
    ax2.set_yticks(range(len(classes)), classes, fontsize=8 if len(classes) <= 30 else 5)
    ax2.set_title("dAP50 per class (that class's AP50 gained if fixed)")
    fig.colorbar(im, ax=ax2, fraction=0.046, pad=0.04)
    return save(fig, path)


def _font():
    return ImageFont.load_default(size=12)


def _label(draw, xy, text: str, colour, font, taken: list) -> None:
    """A filled label above the box corner, moved down below the labels already placed (`taken`) it would
    cover."""
    x, y = xy[0], max(0, xy[1] - 14)
    while True:
        box = draw.textbbox((x, y), text, font=font)
        over = [t for t in taken if box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3]]
        if not over or y > draw.im.size[1]:
            break
        y = max(t[3] for t in over) + 1
    taken.append(box)
    draw.rectangle(box, fill=colour)
    draw.text((x, y), text, fill=(0, 0, 0) if sum(colour) > 300 else (255, 255, 255), font=font)


def _panel(image: Image.Image, boxes: list[tuple], scale: float) -> Image.Image:
    """image with (x1, y1, x2, y2, colour name, text, width) boxes, resized by `scale`; later boxes and
    their labels on top."""
    img = scaled(image, scale)
    d, font = ImageDraw.Draw(img), _font()
    base = max(2, round(max(img.size) / 250))
    for x1, y1, x2, y2, colour, _, width in boxes:   # a dark rim keeps every colour visible on any background
        xy = [x1 * scale, y1 * scale, x2 * scale, y2 * scale]
        d.rectangle([xy[0] - 1, xy[1] - 1, xy[2] + 1, xy[3] + 1], outline=(0, 0, 0), width=base * width + 2)
        d.rectangle(xy, outline=COLOURS[colour], width=base * width)
    taken: list = []
    for x1, y1, _, _, colour, text, _ in boxes[::-1]:
        _label(d, (x1 * scale, y1 * scale), text, COLOURS[colour], font, taken)
    return img


def worst_image(image: Image.Image, truth: list[dict], detections: list[dict], caption: str) -> Image.Image:
    """Left the ground truth (found, Miss, unmatched but pointed at by a Cls/Loc error, crowd), right the
    true positives and the best-scored error detections labelled `type class score`; a caption above and
    the colour legend below. truth: {box x1y1x2y2, name, state}; detections: {box, name, score, type}."""
    scale = figure_scale(image.size, MIN_SIDE)
    gt_boxes = [(*t["box"], t["state"] if t["state"] != "found" else "TP",
                 t["name"] if t["state"] == "found" else f"{t['state']} {t['name']}", 1) for t in truth]
    errors = sorted((d for d in detections if d["type"] != "TP"), key=lambda d: -d["score"])[:MAX_ERRORS_DRAWN]
    hits = [d for d in detections if d["type"] == "TP"]
    det_boxes = [(*d["box"], d["type"], f"{d['type']} {d['name']} {d['score']:.2f}", 2) for d in errors[::-1]]
    det_boxes += [(*d["box"], "TP", f"TP {d['name']} {d['score']:.2f}", 1) for d in hits]
    panels = side_by_side(_panel(image, gt_boxes, scale), _panel(image, det_boxes, scale),
                          ("ground truth", f"detections: true positives and the {len(errors)} best-scored errors"))
    return _framed(panels, caption)


def _framed(panels: Image.Image, caption: str) -> Image.Image:
    """panels with the caption above and two legend rows below (detections, ground truth)."""
    font, line = _font(), 16
    lines = caption.split("\n")
    legend = [("detections:", MEANING), ("ground truth:", GT_LEGEND)]
    top = line * len(lines) + 4
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [[f"{n}: {m}" if entries is MEANING else m for n, m in entries.items()] for _, entries in legend]
    width = max(90 + sum(26 + int(measure.textlength(t, font=font)) for t in row) for row in texts)
    out = Image.new("RGB", (max(panels.width, width), top + panels.height + 2 * line + 12), (255, 255, 255))
    d = ImageDraw.Draw(out)
    for i, text in enumerate(lines):
        d.text((4, 2 + line * i), text, fill=(0, 0, 0), font=font)
    out.paste(panels, (0, top))
    for row, ((title, entries), row_texts) in enumerate(zip(legend, texts)):
        y = top + panels.height + 6 + line * row
        d.text((4, y), title, fill=(0, 0, 0), font=font)
        x = 90
        for name, text in zip(entries, row_texts):
            d.rectangle([x, y + 1, x + 11, y + 12], fill=COLOURS[name], outline=(0, 0, 0))
            d.text((x + 15, y), text, fill=(0, 0, 0), font=font)
            x += 26 + int(d.textlength(text, font=font))
    return out
