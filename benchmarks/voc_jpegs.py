"""A synthetic VOC2007 folder for benchmarks: JPEGs at VOC's sizes (500 wide, 281-375 high, a quarter of them
portrait; photographic grain and quality 90, so that files are about as large as VOC's and decode as slowly),
2-3 boxes of VOC classes each, Annotations as VOC XML and ImageSets/Main/trainval.txt. Seeded per image, so
the same files on every machine. Run alone, it writes one for `bench_epoch.py --data` to reuse:

    python benchmarks/voc_jpegs.py FOLDER [--images 2000] [--scale 1.0]
"""
from __future__ import annotations

import argparse
import json
import os
import time
import xml.etree.ElementTree as ET
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fcos.data import VOC_CLASSES


def _image(args) -> str:
    """Write JPEGImages/<id>.jpg and Annotations/<id>.xml of image i; returns the id."""
    root, i, seed, scale = args
    rng = np.random.default_rng([seed, i])
    w, h = 500, int(375 if rng.random() < 0.45 else rng.integers(281, 375))
    if rng.random() < 0.25:
        w, h = h, w
    w, h = max(32, round(w * scale)), max(32, round(h * scale))
    img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    objects = []
    for _ in range(int(rng.integers(2, 4))):
        bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + bw - 1, y + bh - 1], fill=colour)
        objects.append((VOC_CLASSES[int(rng.integers(len(VOC_CLASSES)))], x, y, x + bw, y + bh,
                        int(rng.random() < 0.05)))
    a = np.asarray(img)   # photographic grain, so that files are about as large as VOC's (and decode as slowly)
    noise = rng.integers(0, 40, a.shape, dtype=np.uint8)
    Image.fromarray(np.where(a > 215, a - noise, a + noise)).save(root / "JPEGImages" / f"{i:06d}.jpg", quality=90)
    ann = ET.Element("annotation")
    ET.SubElement(ann, "filename").text = f"{i:06d}.jpg"
    size = ET.SubElement(ann, "size")
    for k, v in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    for name, x1, y1, x2, y2, difficult in objects:   # VOC pixels: 1-based, inclusive
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = str(difficult)
        box = ET.SubElement(obj, "bndbox")
        for k, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, k).text = str(v)
    ET.ElementTree(ann).write(root / "Annotations" / f"{i:06d}.xml")
    return f"{i:06d}"


def generate(folder: Path, n: int, seed: int = 0, scale: float = 1.0, processes: int = 1) -> tuple[Path, dict]:
    """<folder>/VOCdevkit/VOC2007 with n images and ImageSets/Main/trainval.txt (written last: a folder that
    has it with n ids is reused). Returns the VOC2007 path and what was made."""
    root = folder / "VOCdevkit" / "VOC2007"
    split = root / "ImageSets" / "Main" / "trainval.txt"
    start = time.perf_counter()
    reused = split.is_file() and len(split.read_text().split()) == n
    if not reused:
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        jobs = [(root, i, seed, scale) for i in range(n)]
        if processes > 1:
            with Pool(processes) as pool:
                ids = pool.map(_image, jobs, chunksize=16)
        else:
            ids = [_image(j) for j in jobs]
        split.write_text("\n".join(ids) + "\n")
    files = list((root / "JPEGImages").glob("*.jpg"))
    return root, {"images": n, "folder": str(root), "reused": reused, "seconds": round(time.perf_counter() - start, 2),
                  "mean_kb": round(sum(f.stat().st_size for f in files) / max(1, len(files)) / 1000, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="image sizes as this fraction of VOC's")
    args = ap.parse_args(argv)
    print(json.dumps(generate(args.folder, args.images, args.seed, args.scale, processes=os.cpu_count() or 1)[1]))


if __name__ == "__main__":
    main()
