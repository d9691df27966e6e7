"""Dataset statistics on hand-made records, and the figure and CSV prepare writes from them."""
from pathlib import Path

import numpy as np
import pytest

from fcos.data import Record
from fcos.data.stats import box_table, split_stats


def _record(i, width, height, boxes, labels, difficult=None):
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return Record(i, Path(f"{i}.jpg"), width, height, boxes, np.array(labels, np.int64),
                  np.zeros(n, bool) if difficult is None else np.array(difficult), np.zeros(n, bool))


RECORDS = [_record(1, 200, 100, [[0, 0, 20, 10], [100, 50, 200, 100]], [0, 1], [False, True]),
           _record(2, 200, 100, [[10, 10, 50, 90]], [1]),
           _record(3, 64, 64, [], [])]


def test_split_stats_by_hand():
    s = split_stats(RECORDS, ["a", "b", "c"])
    assert s["images"] == 3 and s["images_without_boxes"] == 1 and s["objects"] == 3
    assert s["objects_per_class"] == {"a": 1, "b": 2, "c": 0}
    assert s["boxes_per_image"]["max"] == 2 and s["boxes_per_image"]["median"] == 1
    assert s["box_width"]["min"] == 20 and s["box_width"]["max"] == 100
    assert s["box_height"]["max"] == 80
    assert s["aspect_ratio"]["min"] == 0.5 and s["aspect_ratio"]["max"] == 2     # 40x80 and 20x10, 100x50
    # relative size sqrt(box area / image area): 20x10 in 200x100 -> 0.1, 100x50 -> 0.5, 40x80 -> 0.4
    assert s["relative_size"]["min"] == pytest.approx(0.1) and s["relative_size"]["max"] == pytest.approx(0.5)
    assert s["size_groups"] == {"small": 1, "medium": 2, "large": 0}              # 200, 3200, 5000 px^2
    assert s["difficult"] == 1 and s["crowd"] == 0
    assert s["image_sizes"] == {"200x100": 2, "64x64": 1}


def test_box_table_centres_relative_to_the_image():
    t = box_table(RECORDS)
    np.testing.assert_allclose(t["rel_cx"], [0.05, 0.75, 0.15])
    np.testing.assert_allclose(t["rel_cy"], [0.05, 0.75, 0.5])
    assert t["boxes"].tolist() == [2, 1, 0] and len(box_table([])["label"]) == 0


def test_dataset_figure_and_csv(tmp_path):
    from pipeline.figures_dataset import write_dataset_outputs
    stats = write_dataset_outputs({"train": RECORDS, "test": RECORDS[1:]}, ["a", "b", "c"], tmp_path)
    assert stats["test"]["objects"] == 1
    assert (tmp_path / "objects_per_class.csv").read_text().splitlines() == ["class,train,test", "a,1,0", "b,2,1",
                                                                            "c,0,0"]
    from PIL import Image
    with Image.open(tmp_path / "dataset.png") as im:
        assert im.width > 1000 and len(np.unique(np.asarray(im.convert("L")))) > 20     # drawn, not blank
