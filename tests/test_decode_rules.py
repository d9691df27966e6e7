"""The rules shared by the PyTorch model and its exported graph (fcos/transform.py, fcos/postprocess.py), where
two implementations exist for speed: each against the other or against the plain Python it replaces."""
import math

import pytest
import torch
from torchvision.ops import batched_nms

from fcos import FCOSConfig
from fcos.points import make_points
from fcos.postprocess import PostProcess, _nms_with_offsets, classwise_nms
from fcos.transform import resized_sizes


def python_size(h: int, w: int, min_size: int, max_size: int, rounding: str) -> tuple[int, int]:
    """The resize arithmetic as plain Python floats (what the model ran before, and torchvision's floor)."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    rnd = math.floor if rounding == "floor" else round
    return max(1, rnd(h * scale)), max(1, rnd(w * scale))


@pytest.mark.parametrize("rounding", ["round", "floor"])
@pytest.mark.parametrize("min_size,max_size", [(64, 96), (128, 256), (608, 1000), (800, 1333)])
def test_resized_sizes_are_python_float_arithmetic_bit_for_bit(rounding, min_size, max_size):
    """float64 tensors give Python's results, ties (x.5: half to even) and float artefacts included
    (49 * (1 / 49) < 1): the sizes the graph computes are the model's."""
    g = torch.Generator().manual_seed(0)
    sizes = torch.cat((torch.randint(2, 4000, (3000, 2), generator=g),
                       torch.tensor([[129, 128], [128, 129], [49, 49], [333, 500], [500, 333], [2, 16384],
                                     [375, 500], [281, 500], [1, 1], [3, 900]]),
                       torch.tensor([[2 * min_size, 2 * min_size + 1], [2 * min_size + 3, 2 * min_size]])))   # x.5
    ours = resized_sizes(sizes.double(), min_size, max_size, rounding).tolist()
    ref = [list(python_size(h, w, min_size, max_size, rounding)) for h, w in sizes.tolist()]
    assert ours == ref
    ties = sum(h * min_size % min(h, w) * 2 == min(h, w) for h, w in sizes.tolist() if max(h, w) * min_size
               <= max_size * min(h, w))
    assert ties > 0   # the half-to-even rule is exercised


def _candidates(n=3000, k=5, seed=0, grid=False):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 80 + 2
    boxes = torch.cat((xy, xy + wh), 1)
    if grid:   # multiples of 1/8 below 512: shifted by class offsets, still exact in float32
        boxes = (boxes * 8).round() / 8
    return boxes, torch.rand(n, generator=g), torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("n", [50, 3000])   # batched_nms: coordinate offsets up to 1000 boxes, class by class above
def test_exact_classwise_nms_equals_batched_nms(n):
    """On boxes where the offsets round nothing, torchvision's batched_nms (offsets or a loop over classes)
    and classwise_nms (the model on the CPU and the graph) keep the same boxes in the same order."""
    boxes, scores, labels = _candidates(n, grid=True)
    ours = classwise_nms(boxes, scores, labels, 0.5, labels.unique().tolist())
    ref = batched_nms(boxes, scores, labels, 0.5)
    assert len(ours) > n // 10 and ours.tolist() == ref.tolist()


def test_nms_ties_keep_candidate_order():
    """Equal scores: the earlier candidate wins, in NMS and in the order of the kept boxes (as onnxruntime's
    NonMaxSuppression and TopK, which the graph runs)."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [20, 20, 30, 30]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.7])
    labels = torch.tensor([1, 1, 0, 1, 0])
    assert classwise_nms(boxes, scores, labels, 0.5, [0, 1]).tolist() == [4, 0]
    assert classwise_nms(boxes, scores, torch.tensor([1, 0, 2, 1, 3]), 0.5, range(4)).tolist() == [4, 0, 1, 2]


def test_offsets_path_one_call_and_per_image_equal_the_exact_rule(monkeypatch):
    """The CUDA path (batched_nms with offsets; image by image above ONE_CALL_MAX) keeps what the exact rule
    keeps, run here on the CPU on boxes the offsets do not round."""
    import fcos.postprocess as pp
    boxes, scores, labels = _candidates(4000, grid=True)
    img = torch.arange(4000) * 3 // 4000                       # three images, candidates image by image
    exact = classwise_nms(boxes, scores, img * 5 + labels, 0.5, range(15))
    exact = exact[torch.sort(img[exact], stable=True).indices]
    one = _nms_with_offsets(boxes, scores, labels, img, 5, 3, 0.5)
    monkeypatch.setattr(pp, "ONE_CALL_MAX", 10)
    per_image = _nms_with_offsets(boxes, scores, labels, img, 5, 3, 0.5)
    assert len(exact) > 1000 and one.tolist() == exact.tolist() == per_image.tolist()


def test_detections_are_per_image_whatever_the_batch():
    """An image's detections do not depend on the other images of its batch (exact NMS: no offsets that
    grow with the batch), and the best detections_per_img of each image are kept, best first."""
    cfg = FCOSConfig(num_classes=4, score_thresh=0.1, nms_thresh=0.5, detections_per_img=40)
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    points, strides, _ = make_points(sizes, (8, 16, 32, 64, 128), torch.device("cpu"))
    g = torch.Generator().manual_seed(4)
    p = len(points)
    cls = torch.randn(3, p, 4, generator=g) * 2 - 2
    box, ctr = torch.rand(3, p, 4, generator=g) * 3, torch.randn(3, p, generator=g)
    image_sizes = torch.tensor([[128.0, 160.0], [100.0, 150.0], [128.0, 90.0]])
    level_sizes = [h * w for h, w in sizes]
    batch = PostProcess(cfg)(cls, box, ctr, points, strides, level_sizes, image_sizes)
    for i, det in enumerate(batch):
        alone = PostProcess(cfg)(cls[i:i + 1], box[i:i + 1], ctr[i:i + 1], points, strides, level_sizes,
                                 image_sizes[i:i + 1])[0]
        assert len(det["scores"]) == 40
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        for key in det:
            assert torch.equal(det[key], alone[key])
