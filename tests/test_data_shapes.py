"""The embedded dataset: byte-identical from a seed, and a real detection problem (measured here)."""
import hashlib

import numpy as np
import torch

from fcos import FCOSConfig
from fcos.data import SHAPES_CLASSES, VOCDataset, generate_shapes
from fcos.loss import FCOSLoss
from fcos.points import make_points
from fcos.targets import assign_targets, pad_targets


def digest(folder):
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate_shapes(tmp_path / "a", seed=7, num_trainval=12, num_test=4)
    b = generate_shapes(tmp_path / "b", seed=7, num_trainval=12, num_test=4)
    c = generate_shapes(tmp_path / "c", seed=8, num_trainval=12, num_test=4)
    assert digest(a) == digest(b) != digest(c)


def test_properties_of_a_real_detection_problem(tmp_path):
    root = generate_shapes(tmp_path, seed=0, num_trainval=100, num_test=20, image_size=256)
    ds = VOCDataset(root, "trainval")
    assert ds.classes == SHAPES_CLASSES and len(SHAPES_CLASSES) >= 6
    counts = np.array([len(r.boxes) for r in ds.records])
    labels = np.concatenate([r.labels for r in ds.records])
    assert (counts == 0).sum() >= 2                      # images with no object
    assert (counts >= 3).mean() > 0.3                    # several objects per image
    assert set(labels.tolist()) == set(range(len(SHAPES_CLASSES)))
    sides = np.concatenate([np.maximum(r.boxes[:, 2] - r.boxes[:, 0], r.boxes[:, 3] - r.boxes[:, 1])
                            for r in ds.records])
    assert sides.min() < 32 and sides.max() > 200        # several scales
    boxes = np.concatenate([r.boxes for r in ds.records])
    cut = (boxes[:, 0] <= 0) | (boxes[:, 1] <= 0) | (boxes[:, 2] >= 256) | (boxes[:, 3] >= 256)
    assert cut.sum() >= 10                               # objects cut by the border
    overlaps = 0
    for r in ds.records:                                 # overlapping (occluding) pairs
        b = torch.from_numpy(r.boxes)
        if len(b) > 1:
            from torchvision.ops import box_iou
            iou = box_iou(b, b)
            overlaps += int(((iou > 0.05) & (iou < 1)).sum()) // 2
    assert overlaps >= 10

    # Positives per FPN level under the real assignment rule at the native size.
    cfg = FCOSConfig(num_classes=6)
    sizes = [(256 // s, 256 // s) for s in cfg.strides]
    points, strides, levels = make_points(sizes, cfg.strides, torch.device("cpu"))
    crit = FCOSLoss(cfg)
    targets = [{"boxes": torch.from_numpy(r.boxes), "labels": torch.from_numpy(r.labels)} for r in ds.records]
    boxes_t, _, valid = pad_targets(targets, torch.device("cpu"))
    matched, _ = assign_targets(points, strides, crit.lo[levels], crit.hi[levels], boxes_t, valid, 1.5)
    per_level = torch.bincount(levels.expand_as(matched)[matched >= 0], minlength=5)
    assert (per_level[:3] > 0).all(), per_level           # P3, P4 and P5 all receive positives


def test_class_colours_change_pixels_not_the_layout(tmp_path):
    import colorsys

    from PIL import Image
    a = generate_shapes(tmp_path / "a", seed=3, num_trainval=30, num_test=2, image_size=96, colours="class")
    b = generate_shapes(tmp_path / "b", seed=3, num_trainval=30, num_test=2, image_size=96, colours="random")
    ra, rb = VOCDataset(a, "trainval").records, VOCDataset(b, "trainval").records
    assert all(np.array_equal(x.boxes, y.boxes) and np.array_equal(x.labels, y.labels) for x, y in zip(ra, rb))
    assert digest(a / "JPEGImages") != digest(b / "JPEGImages")
    # With class colours, the hue at the centre of a small unoccluded object is its class's hue (+-0.03).
    hits = total = 0
    for r in ra:
        img = np.asarray(Image.open(r.file).convert("RGB"), dtype=np.float64) / 255
        for (x1, y1, x2, y2), label in zip(r.boxes, r.labels):
            if SHAPES_CLASSES[label] in ("ring", "cross", "star", "triangle"):
                continue                                   # the centre may be a hole or an edge
            hue = colorsys.rgb_to_hsv(*img[int((y1 + y2) / 2), int((x1 + x2) / 2)])[0]
            want = label / len(SHAPES_CLASSES)
            total += 1
            hits += min(abs(hue - want), 1 - abs(hue - want)) < 0.08
    assert total >= 15 and hits / total > 0.7


def test_unknown_colour_mode_is_refused(tmp_path):
    import pytest
    with pytest.raises(ValueError, match="colours must be"):
        generate_shapes(tmp_path, num_trainval=1, num_test=1, colours="rainbow")


def test_objects_stay_half_visible_and_shapes_of_one_class_never_touch():
    """All the objects drawn over one hide at most MAX_HIDDEN of it; two touching shapes of one class would be
    one silhouette of one colour: an unlearnable pair of boxes."""
    from PIL import Image, ImageFilter

    from fcos.data.shapes import MAX_HIDDEN, _image
    pairs = hidden = 0
    for i in range(60):
        _, objects, masks = _image(np.random.Generator(np.random.PCG64([0, i])), 128, 0.0, 0.1, "class")
        for a in range(len(masks)):
            above = np.zeros_like(masks[a])
            for b in range(a + 1, len(masks)):
                above |= masks[b]
            shown = (masks[a] & ~above).sum() / masks[a].sum()
            hidden += shown < 0.9
            assert shown >= 1 - MAX_HIDDEN, (i, objects[a])
            grown = np.asarray(Image.fromarray(masks[a]).filter(ImageFilter.MaxFilter(3)))
            for b in range(a + 1, len(masks)):
                if objects[a][0] == objects[b][0]:
                    pairs += 1
                    assert not (grown & masks[b]).any(), (i, objects[a], objects[b])
    assert pairs >= 10 and hidden >= 10   # same-class pairs and occlusion do occur


def test_test_images_do_not_depend_on_the_training_size(tmp_path):
    """More training images (data.shapes.num_trainval) leave the test split as it was: results stay comparable."""
    a = generate_shapes(tmp_path / "a", seed=2, num_trainval=6, num_test=3, image_size=64)
    b = generate_shapes(tmp_path / "b", seed=2, num_trainval=9, num_test=3, image_size=64)
    test_a = (a / "ImageSets/Main/test.txt").read_text().split()
    test_b = (b / "ImageSets/Main/test.txt").read_text().split()
    for sa, sb in zip(test_a, test_b, strict=True):
        assert (a / "JPEGImages" / f"{sa}.png").read_bytes() == (b / "JPEGImages" / f"{sb}.png").read_bytes()
    def train_bytes(root, n):
        return [(root / "JPEGImages" / f"{s}.png").read_bytes()
                for s in (root / "ImageSets/Main/trainval.txt").read_text().split()[:n]]
    assert train_bytes(a, 6) == train_bytes(b, 6)   # and the first training images are the same too


def test_the_bytes_do_not_depend_on_the_processes_drawing_them(tmp_path):
    """prepare draws with a process pool (one per torch thread): each image has its own generator, so two
    processes write the very files one does (160 images: enough for the pool to start)."""
    one = generate_shapes(tmp_path / "one", seed=3, num_trainval=140, num_test=20, image_size=48)
    two = generate_shapes(tmp_path / "two", seed=3, num_trainval=140, num_test=20, image_size=48, workers=2)
    assert digest(one) == digest(two)


def test_growing_a_mask_within_its_box_is_growing_it_in_the_whole_image():
    """_touches grows the mask by 2 px in its bounding box only; against the 5x5 maximum over the whole image,
    with masks at the borders and corners and others 2 and 3 px away."""
    from PIL import Image, ImageFilter

    from fcos.data.shapes import _touches
    rng = np.random.default_rng(0)
    checked = {True: 0, False: 0}
    for _ in range(300):
        m = np.zeros((40, 40), bool)
        y, x = rng.integers(-3, 38, 2)
        h, w = rng.integers(1, 12, 2)
        m[max(0, y):y + h, max(0, x):x + w] = True
        if not m.any():
            continue
        other = np.zeros_like(m)
        oy, ox = (int(np.clip(v + rng.integers(-4, d + 4), 0, 39)) for v, d in ((y, h), (x, w)))   # near m
        other[oy, ox] = True
        whole = bool((np.asarray(Image.fromarray(m).filter(ImageFilter.MaxFilter(5))) & other).any())
        assert _touches(m, [other]) == whole, (y, x, h, w, oy, ox)
        checked[whole] += 1
    assert min(checked.values()) >= 20   # both answers occur
