"""fcos.FCOS against torchvision's FCOS (fcos/interop.py): the same network under other names and conventions.

On real photos, detections and a training step's losses must agree; weights travel both ways through
files; wrong files and names fail in one line. Small random torchvision models, built from torchvision's
own parts, stand in for the COCO-trained one (no download)."""
import math
from dataclasses import replace

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FCOS as TVFCOS
from torchvision.models.detection import RetinaNet, fcos_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead as TVHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from fcos import FCOS, FCOSConfig
from fcos.data.voc import VOCDataset
from fcos.interop import config_from_torchvision, match_to_reference, torchvision_state_dict
from fcos.points import make_points
from fcos.postprocess import PostProcess
from fcos.targets import assign_targets

K = 20


def tv_fcos(resnet="resnet18", num_classes=K, channels=64, convs=2, frozen=False, trainable=5, **kw) -> TVFCOS:
    """A torchvision FCOS with a small ResNet-FPN, assembled as torchvision's fcos_resnet50_fpn does."""
    net = getattr(torchvision.models, resnet)(weights=None, norm_layer=FrozenBatchNorm2d if frozen else None)
    stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable] + (["bn1"] if trainable == 5 else [])
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(tuple(stages)))
    e = type(net.layer1[0]).expansion
    fpn = BackboneWithFPN(net, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128 * e, 256 * e, 512 * e], channels,
                          extra_blocks=LastLevelP6P7(channels, channels))
    kw = {"min_size": 320, "max_size": 512, "score_thresh": 0.05, **kw}
    return TVFCOS(fpn, num_classes, head=TVHead(channels, 1, num_classes, convs), **kw)


def busy(tv: TVFCOS) -> TVFCOS:
    """Final layers that score points apart and give boxes a size: a random head scores every point alike
    (ties make "the top detections" arbitrary) and regresses half its boxes to zero width."""
    g = torch.Generator().manual_seed(0)
    h = tv.head
    with torch.no_grad():
        for conv, bias in ((h.classification_head.cls_logits, -1.0), (h.regression_head.bbox_reg, 2.0),
                           (h.regression_head.bbox_ctrness, 0.0)):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.05)
            conv.bias.fill_(bias)
    return tv


@pytest.fixture(scope="module")
def photos(voc_sample):
    ds = VOCDataset(voc_sample, "trainval")
    images, targets = zip(*(ds[i] for i in range(3)), strict=True)
    return list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]


def match(ref: list[dict], out: list[dict], min_iou=0.98, tol=2e-3):
    """Over images: (unmatched reference boxes [U, 4], reference detections, largest score difference)."""
    unmatched, total, worst = [], 0, 0.0
    for r, o in zip(ref, out, strict=True):
        u, w = match_to_reference(r, o, min_iou, tol)
        unmatched.append(u)
        total, worst = total + len(r["scores"]), max(worst, w)
    return torch.cat(unmatched), total, worst


def test_detections_equal_torchvision_on_real_photos(photos):
    images, _ = photos
    tv = busy(tv_fcos()).eval()
    ours = FCOS.from_torchvision(tv).eval()
    with torch.no_grad():
        ref, out = tv(images), ours(images)
    unmatched, total, worst = match(ref, out)
    assert total == 3 * 100 and 1 - len(unmatched) / total >= 0.98 and worst < 1e-4


@pytest.mark.parametrize("drop", [True, False])
def test_boxes_empty_after_clipping_dropped_or_kept_as_torchvision(drop):
    sizes, level_sizes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)], [80, 20, 6, 2, 1]
    points, strides, _ = make_points(sizes, (8, 16, 32, 64, 128), torch.device("cpu"), 0.0, (64, 80))
    g = torch.Generator().manual_seed(0)
    cls, box, ctr = (torch.randn(1, 109, 3, generator=g), torch.rand(1, 109, 4, generator=g),
                     torch.randn(1, 109, generator=g))
    cfg = FCOSConfig(num_classes=3, score_thresh=0.2, detections_per_img=1000, drop_empty_boxes=drop)
    image = torch.tensor([[40.0, 50.0]])   # inside the 64 x 80 batch: points beyond it can give empty boxes
    ours = PostProcess(cfg)(cls, box, ctr, points, strides, level_sizes, image)[0]
    backbone = nn.Conv2d(3, 32, 1)
    backbone.out_channels = 32
    tv = TVFCOS(backbone, 3, score_thresh=0.2, detections_per_img=1000)
    anchors = torch.cat((points - strides[:, None] / 2, points + strides[:, None] / 2), dim=1)
    split = {"cls_logits": list(cls.split(level_sizes, 1)), "bbox_regression": list(box.split(level_sizes, 1)),
             "bbox_ctrness": list(ctr[..., None].split(level_sizes, 1))}
    ref = tv.postprocess_detections(split, [list(anchors.split(level_sizes))], [(40, 50)])[0]
    empty = (ref["boxes"][:, 2] <= ref["boxes"][:, 0]) | (ref["boxes"][:, 3] <= ref["boxes"][:, 1])
    assert empty.sum() >= 5 and (~empty).sum() >= 10
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(ours[key], ref[key][~empty] if drop else ref[key])


def test_training_step_losses_and_gradients_equal_torchvision(photos):
    images, targets = photos   # image 1 has a box at x1 = 0: a point lies exactly on a range bound (open_ranges)
    tv = busy(tv_fcos(frozen=True, trainable=3)).train()
    ours = FCOS.from_torchvision(tv).train()
    ref, out = tv(images, targets), ours(images, targets)
    for a, b in (("classification", "cls_loss"), ("bbox_regression", "reg_loss"), ("bbox_ctrness", "ctr_loss")):
        torch.testing.assert_close(out[b], ref[a], rtol=1e-5, atol=0)
    sum(ref.values()).backward()
    out["final_loss"].backward()
    theirs, mine = dict(tv.named_parameters()), dict(ours.named_parameters())
    for a, b in (("head.classification_head.cls_logits.weight", "head.cls_logits.weight"),
                 ("head.regression_head.bbox_reg.weight", "head.box_reg.weight"),
                 ("backbone.body.layer4.0.conv1.weight", "backbone.body.layer4.0.conv1.weight")):
        ga, gb = theirs[a].grad, mine[b].grad
        # The batches differ by float rounding (normalise, then resize, or the other way round); torchvision
        # against itself with its input perturbed by 1e-7 moves the layer4 gradient by ~2e-3 here.
        assert float((ga - gb).norm() / ga.norm()) < 1e-2


@pytest.mark.parametrize("build", [
    lambda: fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=7),
    lambda: tv_fcos("resnext50_32x4d", num_classes=3, channels=32, convs=1, frozen=True, trainable=2,
                    min_size=(256, 288), max_size=400, score_thresh=0.3, topk_candidates=50),
])
def test_from_torchvision_takes_configuration_weights_and_frozen_layers(build):
    tv = build()
    ours = FCOS.from_torchvision(tv)
    c, t = ours.config, tv.transform
    assert c.backbone in ("resnet50", "resnext50_32x4d") and c.num_classes == tv.head.classification_head.num_classes
    assert (c.fpn_channels, c.gn_groups, c.level_scales, c.point_offset, c.point_spacing, c.resize_rounding,
            c.open_ranges) == \
           (tv.backbone.out_channels, 32, False, 0.0, "padded", "floor", True)
    assert c.min_sizes == tuple(t.min_size) and c.max_size == t.max_size and c.score_thresh == tv.score_thresh
    assert c.freeze_bn == isinstance(tv.backbone.body.bn1, FrozenBatchNorm2d)
    mine = dict(ours.named_parameters())
    theirs = {n: p for n, p in tv.named_parameters()}
    assert sum(p.requires_grad for p in mine.values()) == sum(p.requires_grad for p in theirs.values())
    state = torchvision_state_dict(ours)
    assert state.keys() == tv.state_dict().keys()
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in state.items())


def test_to_torchvision_gives_back_the_same_detector():
    tv = busy(tv_fcos(num_classes=4, convs=1, min_size=96, max_size=160))
    ours = FCOS.from_torchvision(tv).eval()
    back = ours.to_torchvision().eval()
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in back.state_dict().items())
    images = [torch.rand(3, 120, 150), torch.rand(3, 90, 100)]
    with torch.no_grad():
        for a, b in zip(back(images), ours(images), strict=True):
            assert len(a["scores"]) > 20
            for key in ("boxes", "scores", "labels"):
                torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="torchvision's FCOS needs point_offset 0"):
        FCOS(num_classes=4, fpn_channels=32, head_convs=1).to_torchvision()


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    """A torchvision FCOS (ResNet-18, FPN 64, 2 convs per tower, 20 classes) and its state dict file."""
    tv = busy(tv_fcos())
    path = tmp_path_factory.mktemp("tv") / "fcos_r18.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


def test_file_route_from_torchvision_and_back(tv_file, tmp_path):
    tv, path = tv_file
    # torchvision -> fcos-exp, into the paper's conventions: its per-level scales start at 1 (torchvision's function)
    paper = FCOS(num_classes=K, weights=str(path), fpn_channels=64, head_convs=2, gn_groups=32)
    state = torchvision_state_dict(paper)
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in state.items()) and state.keys() == tv.state_dict().keys()
    assert torch.equal(paper.head.scales, torch.ones(5))
    # fcos-exp -> torchvision: a model with torchvision's conventions, saved under torchvision's names
    ours = FCOS(replace(config_from_torchvision(tv), weights=str(path)))
    torch.save(torchvision_state_dict(ours), tmp_path / "ours.pth")
    fresh = tv_fcos()
    fresh.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True))
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_another_class_count_reinitialises_the_classifier_and_keeps_the_rest(tv_file):
    tv, path = tv_file
    m = FCOS(num_classes=3, weights=str(path), fpn_channels=64, head_convs=2, gn_groups=32, freeze_bn=True,
             trainable_layers=2)
    ref = tv.state_dict()
    assert m.head.cls_logits.weight.shape[0] == 3
    torch.testing.assert_close(m.head.cls_logits.bias, torch.full((3,), -math.log(99)))
    assert m.head.cls_logits.weight.std() < 0.02   # a fresh N(0, 0.01) layer, not the file's (std 0.05)
    kept = {k: v for k, v in torchvision_state_dict(m).items() if "cls_logits" not in k}
    assert all(torch.equal(v, ref[k]) for k, v in kept.items())
    body = m.backbone.body
    assert isinstance(body.get_submodule("layer1.0.bn1"), FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in body.layer2.parameters())
    assert all(p.requires_grad for p in body.layer3.parameters())


def _retinanet_state():
    net = torchvision.models.resnet18(weights=None)
    fpn = BackboneWithFPN(net, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], 32,
                          extra_blocks=LastLevelP6P7(32, 32))
    return RetinaNet(fpn, 3).state_dict()


@pytest.mark.parametrize("content,config,message", [
    (lambda tv: torchvision.models.resnet34().state_dict(), {}, "not a resnet18 state dict"),
    (lambda tv: _retinanet_state(), {}, "a detector's state dict but not torchvision's FCOS"),
    (lambda tv: tv.state_dict(), {"backbone": "resnet34"}, "a torchvision FCOS that differs from this model"),
    (lambda tv: tv.state_dict(), {"fpn_channels": 128}, "backbone.fpn.inner_blocks.0.0.weight: [64, 128, 1, 1] there"),
    (lambda tv: tv.state_dict(), {"gn_groups": 16}, "set gn_groups 32 (got 16)"),
    (None, {}, "not a readable state dict"),
])
def test_wrong_files_are_named_in_one_line(tv_file, tmp_path, content, config, message):
    tv, _ = tv_file
    path = tmp_path / "w.pth"
    if content is None:
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save(content(tv), path)
    cfg = {"num_classes": K, "fpn_channels": 64, "head_convs": 2, "gn_groups": 32, **config}
    with pytest.raises(ValueError) as e:
        FCOS(weights=str(path), **cfg)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name,message", [
    ("FCOS_ResNet50_FPN_Weights.NOPE", "not a torchvision weights name"),
    ("RetinaNet_ResNet50_FPN_Weights.COCO_V1", "weights of another torchvision model"),
    ("FCOS_ResNet50_FPN_Weights.COCO_V1", "could not download https://download.pytorch.org/models/fcos_resnet50"),
])
def test_weights_names_and_the_offline_error(tmp_path, monkeypatch, name, message):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))   # an empty cache, and a proxy that refuses: offline anywhere
    for var in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(ValueError) as e:
        FCOS(num_classes=3, backbone="resnet50", weights=name, fpn_channels=256, head_convs=4, gn_groups=32)
    assert message in str(e.value) and f"model.weights {name}:" in str(e.value) and "\n" not in str(e.value)


def test_point_settings_paper_and_torchvision():
    padded = (800, 1088)   # 800 x 1066 padded to /32: P6 and P7 do not divide it (13 x 17 and 7 x 9 cells)
    sizes = [(-(-padded[0] // s), -(-padded[1] // s)) for s in (8, 16, 32, 64, 128)]
    gen = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((1.0,),) * 5)
    anchors = gen(ImageList(torch.zeros(1, 3, *padded), [(800, 1066)]), [torch.zeros(1, 1, *s) for s in sizes])[0]
    points, strides, _ = make_points(sizes, (8, 16, 32, 64, 128), torch.device("cpu"), 0.0, padded)
    torch.testing.assert_close(points, (anchors[:, :2] + anchors[:, 2:]) / 2, rtol=0, atol=0)
    torch.testing.assert_close(strides, anchors[:, 2] - anchors[:, 0], rtol=0, atol=0)   # sizes: the nominal stride
    paper, _, _ = make_points(sizes, (8, 16, 32, 64, 128), torch.device("cpu"))
    p6 = slice(sum(h * w for h, w in sizes[:3]), sum(h * w for h, w in sizes[:4]))
    assert paper[p6][:2].tolist() == [[32.0, 32.0], [96.0, 32.0]] and points[p6][17].tolist() == [0.0, 61.0]


def test_resize_rounding_paper_and_torchvision():
    shapes = [(375, 500), (333, 500), (500, 281), (480, 640)]
    tv = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3).eval()
    expected = [tuple(s) for s in tv([torch.zeros(3, h, w) for h, w in shapes])[0].image_sizes]
    sizes = {}
    for rounding in ("floor", "round"):
        model = FCOS(num_classes=2, fpn_channels=32, head_convs=0, min_size=800, max_size=1333,
                     resize_rounding=rounding).eval()
        sizes[rounding] = [tuple(int(v) for v in model.transform([torch.zeros(3, h, w)])[1][0]) for h, w in shapes]
    assert sizes["floor"] == expected and sizes["round"] != expected   # 375 x 500 -> 800 x 1066 (floor), 1067


@pytest.mark.parametrize("open_ranges,positive", [(False, [True, True]), (True, [False, False])])
def test_range_bounds_closed_paper_and_open_torchvision(open_ranges, positive):
    points = torch.tensor([[64.0, 40.0], [64.0, 40.0]])   # the same point on levels 0 and 1; max(l, t, r, b) = 64
    box = torch.tensor([[[0.0, 10.0, 100.0, 80.0]]])
    m, _ = assign_targets(points, torch.tensor([8.0, 16.0]), torch.tensor([0.0, 64.0]), torch.tensor([64.0, 128.0]),
                          box, torch.ones(1, 1, dtype=torch.bool), radius=100.0, open_ranges=open_ranges)
    assert (m[0] >= 0).tolist() == positive


def test_level_scales_setting():
    assert isinstance(FCOS(num_classes=2, fpn_channels=32, head_convs=1).head.scales, torch.nn.Parameter)
    m = FCOS(num_classes=2, fpn_channels=32, head_convs=1, level_scales=False)
    assert m.head.scales is None and not any("scales" in k for k in m.state_dict())
    with pytest.raises(ValueError, match="point_spacing: must be one of stride, padded"):
        FCOSConfig(point_spacing="anchor")


def test_voc07_from_coco_is_torchvision_coco_fcos(monkeypatch):
    """experiments/voc07_from_coco.yaml sets the network and conventions of torchvision's COCO FCOS (the weights
    are not downloaded here; tests/test_configs.py checks the overlay itself)."""
    from conftest import ROOT

    from pipeline.params import load_params

    monkeypatch.chdir(ROOT)   # overlays name their base relative to the project root
    ours = load_params("experiments/voc07_from_coco.yaml").model_config(20)
    coco = config_from_torchvision(fcos_resnet50_fpn(weights=None, weights_backbone=None))
    same = ("backbone", "fpn_channels", "head_convs", "gn_groups", "level_scales", "resize_rounding", "strides",
            "point_offset", "point_spacing", "range_bounds", "open_ranges", "center_sampling_radius", "image_mean")
    assert {k: getattr(ours, k) for k in same} == {k: getattr(coco, k) for k in same}
    assert ours.weights == "FCOS_ResNet50_FPN_Weights.COCO_V1" and ours.freeze_bn and ours.trainable_layers == 3
