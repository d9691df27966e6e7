"""The embedded default dataset: shapes on noisy backgrounds, generated deterministically in VOC layout.

Six classes, each with its own hue (jittered, random saturation and brightness) by default, as real
object classes have typical colours, so that a CPU run learns the classes within minutes; `colours="random"`
makes shape the only cue (a much harder task). Shapes stand upright within +-17 degrees; sizes from
`min_radius` (a fraction of the image side) to all of the image, so that P3-P5 all receive positives at the
native size; several objects per image with overlap (occlusion capped at half an object; shapes of one class
never touch, which would make one silhouette of one colour), objects cut by the border (`truncated` 1, at
most half of the shape outside), class colours kept apart from the background under them, gradient + noise
+ clutter backgrounds and some images with no object. PNG files and hand-written XML: the same seed gives
the same bytes on every machine.
"""
from __future__ import annotations

import colorsys
import math
import multiprocessing
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES_CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]
MAX_TRUNCATED = 0.5   # the share of a shape's area that may lie outside the image
MAX_HIDDEN = 0.5      # the share of an object (inside the image) that the objects drawn over it may hide
MIN_CONTRAST = 150    # summed |RGB difference| a class-coloured shape keeps from the mean colour under it


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius r centred at (cx, cy), rotated by angle (radians)."""
    if kind == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif kind == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif kind == "star":
        pts = [((1.0 if i % 2 == 0 else 0.42) * math.cos(a), (1.0 if i % 2 == 0 else 0.42) * math.sin(a))
               for i, a in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)]
    elif kind == "cross":
        t = 0.33
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t),
               (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]
    else:
        raise ValueError(kind)
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _area(kind: str, r: float) -> float:
    """The area of a shape of circumradius r (exact for the drawn outlines)."""
    if kind in ("circle", "ring"):
        return math.pi * r * r * (1 - 0.55 ** 2 if kind == "ring" else 1)
    pts = _polygon(kind, 0.0, 0.0, r, 0.0)
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]))) / 2   # shoelace


def _mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)
    if kind in ("circle", "ring"):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if kind == "ring":
            d.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=0)
    else:
        d.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
    return np.asarray(m) > 0


def _touches(m: np.ndarray, others: list[np.ndarray]) -> bool:
    """Whether mask m grown by 2 px (a 5x5 maximum) meets any of `others`. Grown within m's bounding box plus
    the 2 px only: nothing beyond it can change, and the filter costs a fraction of the whole image's."""
    ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    y0, y1 = max(0, ys[0] - 2), min(m.shape[0], ys[-1] + 3)
    x0, x1 = max(0, xs[0] - 2), min(m.shape[1], xs[-1] + 3)
    near = np.asarray(Image.fromarray(m[y0:y1, x0:x1]).filter(ImageFilter.MaxFilter(5)))
    return any((near & other[y0:y1, x0:x1]).any() for other in others)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = (np.cos(theta) * xx + np.sin(theta) * yy + 1) / 2
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    canvas = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 6))):   # clutter: thin lines that are not objects
        pts = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        d.line(pts, fill=tuple(int(v) for v in rng.uniform(0, 255, 3)), width=int(rng.integers(1, 3)))
    return np.asarray(canvas).astype(np.float64)


def _xml(stem: str, size: int, objects: list[tuple[str, list[int], int]]) -> str:
    parts = [f"<annotation>\n  <folder>VOC2007</folder>\n  <filename>{stem}.png</filename>\n"
             f"  <size>\n    <width>{size}</width>\n    <height>{size}</height>\n    <depth>3</depth>\n  </size>\n"]
    for name, (x1, y1, x2, y2), truncated in objects:
        parts.append(f"  <object>\n    <name>{name}</name>\n    <truncated>{truncated}</truncated>\n"
                     f"    <difficult>0</difficult>\n    <bndbox>\n      <xmin>{x1 + 1}</xmin>\n"
                     f"      <ymin>{y1 + 1}</ymin>\n      <xmax>{x2}</xmax>\n      <ymax>{y2}</ymax>\n"
                     f"    </bndbox>\n  </object>\n")
    return "".join(parts) + "</annotation>\n"


def _colour(rng: np.random.Generator, kind: str, colours: str, under: np.ndarray) -> np.ndarray:
    """An RGB colour for a shape of class `kind` that stands out from `under` (the mean colour below it)."""
    if colours == "random":
        colour = rng.uniform(0, 255, 3)
        return 255 - colour if np.abs(under - colour).sum() < 120 else colour
    hue = (SHAPES_CLASSES.index(kind) / len(SHAPES_CLASSES) + rng.uniform(-0.03, 0.03)) % 1.0
    sat, val = rng.uniform(0.75, 1.0), rng.uniform(0.6, 1.0)
    colour = np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255
    if np.abs(under - colour).sum() < MIN_CONTRAST:   # too close to what is under it: same hue, the brightness
        darker, brighter = (np.array(colorsys.hsv_to_rgb(hue, sat, v)) * 255 for v in (0.3, 1.0))   # that differs most
        colour = max((colour, darker, brighter), key=lambda c: np.abs(under - c).sum())
    return colour


def _image(rng: np.random.Generator, size: int, empty_prob: float, min_radius: float,
           colours: str) -> tuple[np.ndarray, list, list[np.ndarray]]:
    """An image [size, size, 3] uint8, its objects (class, visible box, truncated) and their full masks."""
    img = _background(rng, size)
    n = 0 if rng.random() < empty_prob else int(rng.integers(1, 7))
    owner = np.full((size, size), -1)            # which object each pixel shows
    masks, kinds, truncs = [], [], []
    for _ in range(n * 4):                       # placement attempts
        if len(masks) == n:
            break
        kind = SHAPES_CLASSES[int(rng.integers(len(SHAPES_CLASSES)))]
        r = math.exp(rng.uniform(math.log(size * min_radius), math.log(size * 0.55)))
        cx, cy = rng.uniform(-0.2 * r, size + 0.2 * r), rng.uniform(-0.2 * r, size + 0.2 * r)
        m = _mask(kind, size, cx, cy, r, rng.uniform(-0.3, 0.3))   # upright, as objects in photos mostly are
        if m.sum() < max(40, (1 - MAX_TRUNCATED) * _area(kind, r)):   # mostly outside the image
            continue
        same = [masks[j] for j in range(len(masks)) if kinds[j] == kind]
        if same and _touches(m, same):   # two same-class shapes touching would read as one silhouette
            continue
        left = [int((~m & (owner == j)).sum()) for j in range(len(masks))]   # what stays visible of each
        if any(v < (1 - MAX_HIDDEN) * masks[j].sum() for j, v in enumerate(left)):   # all occluders together
            continue
        colour = _colour(rng, kind, colours, img[m].mean(0))
        img[m] = colour * rng.uniform(0.85, 1.0)
        owner[m] = len(masks)
        masks.append(m)
        kinds.append(kind)
        truncs.append(int(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()))
    img = img + rng.normal(0, rng.uniform(3, 12), img.shape)
    objects = []
    for j, (kind, t) in enumerate(zip(kinds, truncs)):
        visible = owner == j
        ys, xs = np.nonzero(visible)
        objects.append((kind, [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1], t))
    return img.clip(0, 255).astype(np.uint8), objects, masks


def _write(job: tuple) -> None:
    """Draw one image from its own seeded generator and write its PNG and XML (a process pool's task)."""
    root, stem, rng_key, image_size, empty_prob, min_radius, colours = job
    img, objects, _ = _image(np.random.Generator(np.random.PCG64(rng_key)), image_size, empty_prob, min_radius,
                             colours)
    Image.fromarray(img).save(root / "JPEGImages" / f"{stem}.png", optimize=False, compress_level=6)
    (root / "Annotations" / f"{stem}.xml").write_text(_xml(stem, image_size, objects))


def generate_shapes(out_dir: str | Path, seed: int = 0, num_trainval: int = 480, num_test: int = 120,
                    image_size: int = 256, empty_prob: float = 0.06, min_radius: float = 0.045,
                    colours: str = "class", workers: int = 1) -> Path:
    """Write VOCdevkit/VOC2007 (JPEGImages/*.png, Annotations/*.xml, ImageSets/Main/{trainval,test}.txt,
    classes.txt) under out_dir and return the VOC2007 folder. Deterministic in every byte, whatever `workers`.

    min_radius: the smallest shape's circumradius as a fraction of image_size; colours: "class" (a hue per
    class) or "random" (shape is the only cue); workers: processes drawing the images (forked, so only where
    the platform forks: Linux; elsewhere one). Every image has its own generator, so the split does not
    change a byte."""
    if colours not in ("class", "random"):
        raise ValueError(f"colours must be 'class' or 'random', got {colours!r}")
    root = Path(out_dir) / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    stems = [f"{i:06d}" for i in range(1, num_trainval + num_test + 1)]
    # per image, by split: num_trainval leaves the test images alone
    jobs = [(root, stem, [seed, *((0, i) if i < num_trainval else (1, i - num_trainval))], image_size, empty_prob,
             min_radius, colours) for i, stem in enumerate(stems)]
    workers = min(workers, len(jobs) // 64) if sys.platform == "linux" else 1   # a pool costs more than a few images
    if workers > 1:
        # fork: the children inherit the imported modules (spawn would import torch again, seconds each); they
        # run numpy and PIL only, never the parent's OpenMP threads
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(_write, jobs, chunksize=32)
    else:
        for job in jobs:
            _write(job)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(stems[:num_trainval]) + "\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(stems[num_trainval:]) + "\n")
    (root / "classes.txt").write_text("\n".join(SHAPES_CLASSES) + "\n")
    return root
