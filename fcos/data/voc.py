"""PASCAL VOC reader: VOCdevkit/VOC<year>/{Annotations, JPEGImages, ImageSets/Main/<split>.txt}.

Coordinates: VOC pixels are 1-based and inclusive, so x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax
(a box's width is xmax - xmin + 1, the usual conversion).
"""
from __future__ import annotations

import glob
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .dataset import DetectionDataset, Record
from .errors import DataError, DataReport
from .images import image_size
from .sanitize import check_regular, clean_boxes, read_text, safe_path

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


def voc_classes(root: str | Path) -> list[str]:
    """classes.txt in the VOC folder when present (the embedded dataset writes one), else VOC's 20."""
    f = Path(root) / "classes.txt"
    if not f.exists():
        return list(VOC_CLASSES)
    classes = [c.strip() for c in read_text(f, "class list").splitlines() if c.strip()]
    if not classes:
        raise DataError(f"{f}: lists no class names")
    return classes


def split_ids(root: Path, split: str) -> list[str]:
    """The image ids a split file lists (UTF-8, a BOM allowed); DataError when it lists none."""
    f = root / "ImageSets" / "Main" / f"{split}.txt"
    ids = [line.split()[0] for line in read_text(f, "split file").splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{f}: lists no images")
    return ids


def stable_image_ids(stems: list[str]) -> list[int]:
    """The digits of each stem (2007_000027 -> 2007000027, 000005 -> 5) when they are unique and below
    2**53 (exact in COCO's float64 results), else 1-based positions in the sorted list of stems."""
    digits = [re.sub(r"\D", "", s) for s in stems]
    if all(digits) and len(set(map(int, digits))) == len(stems) and max(map(int, digits)) < 2**53:
        return [int(d) for d in digits]
    order = {s: i + 1 for i, s in enumerate(sorted(stems))}
    return [order[s] for s in stems]


def _parse(xml_file: Path, root: Path, stem: str, image_id: int, class_index: dict, report: DataReport,
           check_images: bool) -> Record | None:
    if not xml_file.exists():
        report.problem("missing annotation", xml_file, "annotation file not found (image skipped)")
        return None
    try:
        check_regular(xml_file, "annotation file")
        ann = ET.parse(xml_file).getroot()
    except DataError as e:
        report.problem("malformed annotation", xml_file, f"{e.args[0].split(': ', 1)[-1]} (image skipped)")
        return None
    except ET.ParseError as e:
        report.problem("malformed annotation", xml_file, f"malformed XML ({e}) (image skipped)")
        return None
    if ann.tag != "annotation":
        report.problem("malformed annotation", xml_file, f"root element <{ann.tag:.20}> is not <annotation> "
                       "(image skipped)")
        return None
    image_dir = root / "JPEGImages"
    file = safe_path(image_dir, ann.findtext("filename") or f"{stem}.jpg", xml_file)
    if not file.exists():   # the stem's image under another extension (the split's stem, checked already)
        alt = sorted(image_dir.glob(f"{glob.escape(stem)}.*"))
        if not alt:
            report.problem("missing image", xml_file, f"image {file.name} not found (image skipped)")
            return None
        file = alt[0]
    try:
        width, height = int(ann.findtext("size/width")), int(ann.findtext("size/height"))
    except (TypeError, ValueError):
        width = height = 0
    if check_images or width <= 0 or height <= 0:
        try:
            real = image_size(file, verify=check_images)
        except DataError as e:
            report.problem("unreadable image", file,
                           f"unreadable image: {e.args[0].split(': ', 1)[-1]} (image skipped)")
            return None
        if (width, height) != real:
            if width > 0:
                report.problem("size mismatch", xml_file, f"size {width}x{height} differs from the image's "
                               f"{real[0]}x{real[1]} (image size used)")
            width, height = real
    boxes, labels, difficult = [], [], []
    for obj in ann.iter("object"):
        cls = (obj.findtext("name") or "").strip()
        if cls not in class_index:
            report.problem("unknown class", xml_file, f"unknown class {cls!r} (object skipped)")
            continue
        try:
            b = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            report.problem("malformed annotation", xml_file, f"object {cls!r} has no numeric bndbox (skipped)")
            continue
        boxes.append([b[0] - 1, b[1] - 1, b[2], b[3]])
        labels.append(class_index[cls])
        difficult.append(obj.findtext("difficult", "0").strip() == "1")
    boxes_a, keep = clean_boxes(np.array(boxes, np.float32).reshape(-1, 4), width, height, xml_file, report)
    return Record(image_id, file, width, height, boxes_a, np.array(labels, np.int64)[keep],
                  np.array(difficult, bool)[keep], np.zeros(int(keep.sum()), bool))


def read_voc(root: str | Path, split: str, classes: list[str] | None = None, report: DataReport | None = None,
             check_images: bool = False) -> tuple[list[Record], list[str]]:
    """Parse a split into records; problems go to `report` (one line each, counted)."""
    root = Path(root)
    if not (root / "Annotations").is_dir():
        raise DataError(f"{root}: not a VOC folder (no Annotations/ inside)")
    classes = list(classes) if classes else voc_classes(root)
    report = report if report is not None else DataReport()
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    stems = split_ids(root, split)
    if len(set(stems)) != len(stems):
        seen: set[str] = set()
        for s in stems:
            if s in seen:
                report.problem("duplicate id", split_file, f"image {s} listed twice (second skipped)")
            seen.add(s)
        stems = list(dict.fromkeys(stems))
    ids = stable_image_ids(stems)
    index = {c: i for i, c in enumerate(classes)}
    records = [_parse(safe_path(root / "Annotations", f"{s}.xml", split_file), root, s, i, index, report,
                      check_images) for s, i in zip(stems, ids)]
    return [r for r in records if r is not None], classes


class VOCDataset(DetectionDataset):
    """A VOC split; labels 0..K-1 in the order of `classes`, COCO category ids 1..K."""

    def __init__(self, root: str | Path, split: str = "trainval", classes: list[str] | None = None, *,
                 train: bool = False, use_difficult: bool = True, report: DataReport | None = None,
                 check_images: bool = False):
        records, classes = read_voc(root, split, classes, report, check_images)
        super().__init__(records, classes, list(range(1, len(classes) + 1)), train=train,
                         use_difficult=use_difficult)
