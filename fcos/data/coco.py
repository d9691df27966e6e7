"""COCO-format reader and writer: an instances json plus an image folder.

Category ids map to contiguous labels 0..K-1 in ascending id order and back (`dataset.cat_ids`).
Crowd boxes are kept for evaluation (iscrowd) and never used as positives in training. The writer
keeps VOC's difficult flag per annotation and, with difficult_as_crowd, marks difficult boxes as
crowd so COCOeval ignores them.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .dataset import DetectionDataset, Record, empty_record
from .errors import DataError, DataReport
from .images import image_size
from .sanitize import clean_boxes, read_text, safe_path

MAX_ID = 2**53   # ids travel as float64 in COCO results arrays: larger ones would not come back exact


def _load_json(path: Path) -> dict:
    text = read_text(path, "annotation file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e})") from None
    except RecursionError:
        raise DataError(f"{path}: malformed JSON (nested too deeply)") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise DataError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{path}: 'annotations' must be a list")
    if not isinstance(data.get("image_root", "."), str):
        raise DataError(f"{path}: 'image_root' must be a string")
    return data


def _is_id(v: object) -> bool:
    """A COCO id: a JSON integer in [0, 2**53) ("7", 1.5, [1] and true are not)."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_ID


def _size(v: object) -> int | None:
    """A width or height: a positive whole number; 0 when absent (then measured); None when malformed."""
    if v is None or v == 0:
        return 0
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and float(v).is_integer()
    return int(v) if ok else None


def _is_xywh(bbox: object) -> bool:
    return isinstance(bbox, list) and len(bbox) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)


def read_coco(ann_file: str | Path, image_dir: str | Path | None = None, report: DataReport | None = None,
              check_images: bool = False) -> tuple[list[Record], list[str], list[int]]:
    """Records, class names and category ids. image_dir defaults to the json's "image_root" entry
    (relative to the json) or the json's folder. Ids must be integers in [0, 2**53): an image entry
    that breaks this is skipped with its annotations (counted), a category stops reading (DataError)."""
    ann_file = Path(ann_file)
    report = report if report is not None else DataReport()
    data = _load_json(ann_file)
    if image_dir is None:
        image_dir = ann_file.parent / data.get("image_root", ".")
    image_dir = Path(image_dir)
    cats = data["categories"]
    if not all(isinstance(c, dict) and _is_id(c.get("id")) and "name" in c for c in cats):
        raise DataError(f"{ann_file}: every category needs an integer 'id' and a 'name'")
    cats = sorted(cats, key=lambda c: c["id"])
    cat_ids, classes = [c["id"] for c in cats], [str(c["name"]) for c in cats]
    if len(set(cat_ids)) != len(cat_ids):
        raise DataError(f"{ann_file}: duplicate category ids")
    label_of = {c: i for i, c in enumerate(cat_ids)}

    records: dict[int, Record] = {}
    listed: set = set()   # every image id the file lists: annotations of skipped images are not reported twice
    for img in data["images"]:
        iid = img.get("id") if isinstance(img, dict) else None
        if isinstance(iid, (int, float, str)):
            listed.add(iid)
        name = img.get("file_name") if isinstance(img, dict) else None
        if not _is_id(iid) or not isinstance(name, str) or not name:
            report.problem("malformed annotation", ann_file, f"image entry {img!r:.80} needs an integer id in "
                           "[0, 2**53) and a file_name (image and its annotations skipped)")
            continue
        if iid in records:
            report.problem("duplicate id", ann_file, f"image id {iid} appears twice (second skipped)")
            continue
        file = safe_path(image_dir, name, ann_file)
        if not file.exists():
            report.problem("missing image", file, "image file not found (image skipped)")
            continue
        w, h = _size(img.get("width")), _size(img.get("height"))
        if w is None or h is None:
            report.problem("malformed annotation", ann_file, f"image {iid} has width {img.get('width')!r:.20} and "
                           f"height {img.get('height')!r:.20}, not positive integers (image size used)")
            w = h = 0
        if check_images or not (w and h):
            try:
                real = image_size(file, verify=check_images)
            except DataError as e:
                report.problem("unreadable image", file,
                           f"unreadable image: {e.args[0].split(': ', 1)[-1]} (image skipped)")
                continue
            if w and h and (w, h) != real:
                report.problem("size mismatch", ann_file, f"image {iid} is {real[0]}x{real[1]}, not {w}x{h} "
                               "(image size used)")
            w, h = real
        records[iid] = empty_record(iid, file, w, h)

    per_image: dict[int, list] = {}
    seen_ann: set = set()
    for a in data.get("annotations", []):
        if not isinstance(a, dict):
            report.problem("malformed annotation", ann_file, f"annotation entry {a!r:.80} is not an object (skipped)")
            continue
        aid, iid, cid, bbox = a.get("id"), a.get("image_id"), a.get("category_id"), a.get("bbox")
        if isinstance(iid, (int, float, str)) and iid in listed and iid not in records:
            continue                                         # its image was skipped, and reported
        if not (aid is None or _is_id(aid)) or not _is_id(iid) or not _is_id(cid):
            report.problem("malformed annotation", ann_file, f"annotation {aid!r:.40}: id, image_id and "
                           "category_id must be integers in [0, 2**53) (skipped)")
            continue
        if aid is not None and aid in seen_ann:
            report.problem("duplicate id", ann_file, f"annotation id {aid} appears twice (second skipped)")
            continue
        seen_ann.add(aid)
        if iid not in records:
            report.problem("malformed annotation", ann_file, f"annotation {aid} refers to unknown image {iid}")
            continue
        if cid not in label_of:
            report.problem("unknown class", ann_file, f"annotation {aid} has unknown category id {cid} (skipped)")
            continue
        if not _is_xywh(bbox):
            report.problem("malformed annotation", ann_file,
                           f"annotation {aid} has no finite [x, y, w, h] bbox (skipped)")
            continue
        x, y, w, h = bbox
        per_image.setdefault(iid, []).append(([x, y, x + w, y + h], label_of[cid], bool(a.get("difficult", 0)),
                                               bool(a.get("iscrowd", 0))))
    for iid, objs in per_image.items():
        r = records[iid]
        boxes, keep = clean_boxes(np.array([o[0] for o in objs], np.float32), r.width, r.height,
                                  f"{ann_file} image {iid}", report)
        r.boxes = boxes
        r.labels = np.array([o[1] for o in objs], np.int64)[keep]
        r.difficult = np.array([o[2] for o in objs], bool)[keep]
        r.iscrowd = np.array([o[3] for o in objs], bool)[keep]
    return list(records.values()), classes, cat_ids


class CocoDataset(DetectionDataset):
    """A COCO-format split (instances json + images)."""

    def __init__(self, ann_file: str | Path, image_dir: str | Path | None = None, *, train: bool = False,
                 use_difficult: bool = True, report: DataReport | None = None, check_images: bool = False):
        records, classes, cat_ids = read_coco(ann_file, image_dir, report, check_images)
        super().__init__(records, classes, cat_ids, train=train, use_difficult=use_difficult)


def coco_dict(records: list[Record], classes: list[str], cat_ids: list[int], image_root: Path,
              difficult_as_crowd: bool = False) -> dict:
    """COCO instances dict; file names relative to image_root."""
    images, anns = [], []
    for r in records:
        images.append({"id": r.image_id, "file_name": os.path.relpath(r.file, image_root),
                       "width": r.width, "height": r.height})
        for b, lab, diff, crowd in zip(r.boxes.tolist(), r.labels.tolist(), r.difficult.tolist(),
                                       r.iscrowd.tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": r.image_id, "category_id": cat_ids[lab],
                         "bbox": [round(v, 2) for v in (b[0], b[1], w, h)], "area": round(w * h, 2),
                         "iscrowd": int(crowd or (diff and difficult_as_crowd)), "difficult": int(diff)})
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, classes)]}


def write_coco(path: str | Path, records: list[Record], classes: list[str], cat_ids: list[int],
               difficult_as_crowd: bool = False) -> Path:
    """Write records as COCO json (temp file + rename). Image paths are stored relative to an "image_root"
    entry, itself relative to the json, so the pair can move together."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.commonpath([str(r.file.parent) for r in records])) if records else path.parent.resolve()
    data = coco_dict(records, classes, cat_ids, root, difficult_as_crowd)
    data["image_root"] = os.path.relpath(root, path.parent.resolve())
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
    return path


def write_coco_gt(dataset: DetectionDataset, path: str | Path, difficult_as_crowd: bool = False) -> Path:
    """A dataset's ground truth as COCO json, for evaluation through the one COCO path."""
    return write_coco(path, dataset.records, dataset.classes, dataset.cat_ids, difficult_as_crowd)
