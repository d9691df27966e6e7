"""The VOC reader on genuine VOC2007 images (the 100 of ../shared, or the 12 shipped in tests/data), checked
against an independent parse."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fcos.data import VOC_CLASSES, VOCDataset, write_coco_gt


def independent_parse(root, split):
    ids = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    boxes = difficult = 0
    classes = set()
    for i in ids:
        for obj in ET.parse(root / "Annotations" / f"{i}.xml").getroot().iter("object"):
            boxes += 1
            difficult += obj.find("difficult").text.strip() == "1"
            classes.add(obj.find("name").text.strip())
    return len(ids), boxes, difficult, classes


@pytest.mark.parametrize("split", ["trainval", "test"])
def test_counts_match_an_independent_parse(voc_sample, split):
    n_images, n_boxes, n_difficult, classes = independent_parse(voc_sample, split)
    ds = VOCDataset(voc_sample, split)
    assert len(ds) == n_images
    assert sum(len(r.boxes) for r in ds.records) == n_boxes
    assert sum(int(r.difficult.sum()) for r in ds.records) == n_difficult
    assert {ds.classes[label] for r in ds.records for label in r.labels} == classes <= set(VOC_CLASSES)
    assert len(classes) == (20 if n_images >= 30 else len(classes))   # the 100-image sample has every class


def test_coordinates_follow_the_one_based_convention(voc_sample):
    ds = VOCDataset(voc_sample, "trainval")
    r = ds.records[0]
    obj = ET.parse(voc_sample / "Annotations" / f"{r.file.stem}.xml").getroot().find("object/bndbox")
    xmin, ymin, xmax, ymax = (float(obj.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
    assert r.boxes[0].tolist() == [xmin - 1, ymin - 1, xmax, ymax]
    assert r.image_id == int(r.file.stem.replace("_", ""))
    image, target = ds[0]
    assert image.shape == (3, r.height, r.width) and image.dtype == torch.float32
    assert target["boxes"].shape == (len(r.boxes), 4) and target["labels"].dtype == torch.int64


def test_training_view_drops_difficult_boxes_on_request(voc_sample):
    keep = VOCDataset(voc_sample, "trainval", train=True, use_difficult=True)
    drop = VOCDataset(voc_sample, "trainval", train=True, use_difficult=False)
    keep.flip_prob = drop.flip_prob = 0.0
    n_keep = sum(len(keep[i][1]["boxes"]) for i in range(len(keep)))
    n_drop = sum(len(drop[i][1]["boxes"]) for i in range(len(drop)))
    n_difficult = sum(int(r.difficult.sum()) for r in keep.records)
    assert n_difficult > 0 and n_keep - n_drop == n_difficult


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_ground_truth_as_detections_scores_ap_one(voc_sample, tmp_path, backend):
    from fcos.coco_eval import coco_evaluate

    ds = VOCDataset(voc_sample, "test")
    gt_path = write_coco_gt(ds, tmp_path / "test.json")
    coco = COCO(str(gt_path))
    dets = np.array([[a["image_id"], *a["bbox"], 1.0, a["category_id"]] for a in coco.dataset["annotations"]])
    if backend == "pycocotools":   # straight pycocotools, no code of ours on the scoring path
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)
    else:
        m = coco_evaluate(gt_path, dets, "faster")
        present = {ds.classes[label] for r in ds.records for label in r.labels}
        assert m["AP"] == pytest.approx(1.0)
        assert all(v == pytest.approx(1.0) for c, v in m["per_class_AP50"].items() if c in present)
        assert all(v is None for c, v in m["per_class_AP50"].items() if c not in present)
