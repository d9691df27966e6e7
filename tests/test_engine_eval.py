"""Evaluation: faster-coco-eval and pycocotools give the same numbers; timings are reported apart."""
import numpy as np
import pytest
import torch

from fcos import FCOS
from fcos.coco_eval import STAT_NAMES, coco_evaluate
from fcos.data import VOCDataset, build_loader, write_coco_gt
from fcos.engine import evaluate


def noisy_detections(gt_path, seed=0):
    """Ground truth jittered, dropped, relabelled and padded with false positives: a realistic mix."""
    import json
    rng = np.random.default_rng(seed)
    data = json.loads(gt_path.read_text())
    cats = [c["id"] for c in data["categories"]]
    rows = []
    for a in data["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        cat = a["category_id"] if rng.random() > 0.1 else int(rng.choice(cats))
        rows.append([a["image_id"], x + jitter[0], y + jitter[1], max(1, w + jitter[2]), max(1, h + jitter[3]),
                     rng.random(), cat])
    for img in data["images"]:
        for _ in range(3):
            w, h = rng.uniform(10, 100, 2)
            rows.append([img["id"], rng.uniform(0, 200), rng.uniform(0, 200), w, h, rng.random() * 0.5,
                         int(rng.choice(cats))])
    return np.array(rows)


def test_faster_coco_eval_agrees_with_pycocotools(voc_sample, tmp_path):
    ds = VOCDataset(voc_sample, "trainval")
    gt = write_coco_gt(ds, tmp_path / "gt.json")
    dets = noisy_detections(gt)
    fast = coco_evaluate(gt, dets, "faster")
    ref = coco_evaluate(gt, dets, "pycocotools")
    assert 0.2 < ref["AP50"] < 0.95
    for name in STAT_NAMES:
        assert fast[name] == pytest.approx(ref[name], abs=1e-6), name
    for c in ref["per_class_AP50"]:
        assert fast["per_class_AP50"][c] == pytest.approx(ref["per_class_AP50"][c], abs=1e-6)
        assert fast["per_class_AP"][c] == pytest.approx(ref["per_class_AP"][c], abs=1e-6)


def test_results_built_without_loadres_match_plain_pycocotools(voc_sample, tmp_path, capsys):
    """coco_evaluate builds the results object itself; pycocotools run the documented way must agree."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    ds = VOCDataset(voc_sample, "trainval")
    gt = write_coco_gt(ds, tmp_path / "gt.json")
    dets = noisy_detections(gt, seed=1)
    coco_gt = COCO(str(gt))
    ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    capsys.readouterr()
    ours = coco_evaluate(gt, dets, "faster")
    assert capsys.readouterr().out == ""          # no library chatter on stdout
    assert [ours[n] for n in STAT_NAMES] == pytest.approx(list(ev.stats), abs=1e-9)


def test_detections_on_unknown_images_are_refused(voc_sample, tmp_path):
    gt = write_coco_gt(VOCDataset(voc_sample, "test"), tmp_path / "gt.json")
    with pytest.raises(ValueError, match="absent from the ground truth: \\[987654\\]"):
        coco_evaluate(gt, np.array([[987654, 1, 1, 5, 5, 0.9, 1]]))


def test_no_detections_scores_zero_where_there_is_ground_truth_and_none_elsewhere(voc_sample, tmp_path):
    """As COCOeval scores a detection that matches nothing: 0 for what the ground truth holds, None (COCO's
    -1) for a class or a size it does not hold; never a made-up 0."""
    ds = VOCDataset(voc_sample, "test")
    ds.records = [r for r in ds.records if not (r.labels == 14).any()][:10]     # no person: a class without GT
    gt = write_coco_gt(ds, tmp_path / "gt.json")
    m = coco_evaluate(gt, np.zeros((0, 7)))
    present = {ds.classes[int(lab)] for r in ds.records for lab in r.labels}
    assert m["AP"] == 0 and "person" not in present
    assert m["per_class_AP50"] == {c: (0.0 if c in present else None) for c in ds.classes}
    far = np.array([[ds.records[0].image_id, 0, 0, 1, 1, 0.01, ds.cat_ids[0]]])   # one detection on nothing
    ref = coco_evaluate(gt, far)
    assert {k: m[k] is None for k in STAT_NAMES} == {k: ref[k] is None for k in STAT_NAMES}


def test_evaluate_reports_metrics_and_timings_apart(voc_sample, tmp_path):
    ds = VOCDataset(voc_sample, "test")
    ds.records = ds.records[:6]
    n = len(ds.records)
    gt = write_coco_gt(ds, tmp_path / "gt.json")
    torch.manual_seed(0)
    model = FCOS(num_classes=20, fpn_channels=16, head_convs=1, gn_groups=8, min_size=96, max_size=128)
    m = evaluate(model, build_loader(ds, 3), gt, ds.cat_ids)
    assert m["num_images"] == n and set(STAT_NAMES) <= set(m) and m["amp"] == "none"
    assert m["inference_seconds"] >= m["model_seconds"] > 0 and m["metric_seconds"] > 0
    assert m["ms_per_image"] == pytest.approx(1000 * m["model_seconds"] / n)
    dets = m["detections"]
    assert dets.shape[1] == 7 and set(dets[:, 0].astype(int)) <= set(ds.image_ids)
    assert set(dets[:, 6].astype(int)) <= set(ds.cat_ids)
