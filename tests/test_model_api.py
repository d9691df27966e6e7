"""The public FCOS API: shapes, edge cases, bad input, weights from a local file."""
import pytest
import torch
import torchvision

from fcos import FCOS, FCOSConfig


def tiny(**kw):
    return FCOS(num_classes=3, fpn_channels=32, head_convs=1, min_size=96, max_size=160, **kw)


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny()


def test_train_returns_the_loss_dict_and_backprops(model):
    model.train()
    images = [torch.rand(3, 100, 150), torch.rand(3, 120, 90)]  # different sizes in one batch
    losses = model(images, [target([[10, 10, 60, 50]], [0]), target([[5, 5, 80, 100], [20, 30, 40, 50]], [1, 2])])
    assert set(losses) == {"cls_loss", "reg_loss", "ctr_loss", "final_loss"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    losses["final_loss"].backward()
    assert model.head.cls_logits.weight.grad is not None


@pytest.mark.parametrize("boxes,labels", [
    ([], []),                              # no boxes: all points negative
    ([[0, 0, 128, 128]], [1]),             # a box covering the whole image
    ([[50, 50, 52, 52]], [2]),             # a 2x2-pixel box
])
def test_edge_cases_give_finite_losses(model, boxes, labels):
    model.train()
    losses = model([torch.rand(3, 128, 128)], [target(boxes, labels)])  # batch size 1
    assert all(torch.isfinite(v) for v in losses.values())


def test_eval_detections_are_in_input_image_pixels(model):
    model.eval()
    images = [torch.rand(3, 300, 200), torch.rand(3, 64, 500)]
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2
    for d, img in zip(dets, images):
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["scores"]) == len(d["labels"]) <= 100
        h, w = img.shape[1:]
        assert (d["boxes"][:, [0, 2]] <= w + 1e-3).all() and (d["boxes"][:, [1, 3]] <= h + 1e-3).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()


@pytest.mark.parametrize("images,targets,message", [
    ([torch.rand(1, 64, 64)], [target([], [])], "image 0: expected a float tensor [3, H, W]"),
    ([torch.zeros(3, 64, 64, dtype=torch.uint8)], [target([], [])], "image 0: expected a float tensor"),
    ([torch.rand(3, 64, 64)] * 2, [target([], []), target([[30, 10, 20, 40]], [0])], "image 1: box 0"),
    ([torch.rand(3, 64, 64)], [target([[1, 1, 20, 20]], [3])], "image 0: labels must be in [0, 3)"),
    ([torch.rand(3, 64, 64)], [{"boxes": torch.zeros(1, 5), "labels": torch.zeros(1, dtype=torch.long)}],
     "image 0: boxes must be a float tensor [N, 4]"),
    ([torch.rand(3, 64, 64)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}],
     "image 0: labels must be an int64"),
])
def test_bad_input_raises_value_error_naming_the_image(model, images, targets, message):
    model.train()
    with pytest.raises(ValueError) as e:
        model(images, targets)
    assert message in str(e.value)


def test_config_round_trip_and_validation():
    m = tiny()
    again = FCOS(FCOSConfig.from_dict(m.config.to_dict()))
    assert again.config == m.config
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in m.parameters())
    with pytest.raises(ValueError, match="backbone 'resnet9'"):
        FCOSConfig(backbone="resnet9")
    with pytest.raises(ValueError, match="gn_groups: must divide fpn_channels"):
        FCOSConfig(fpn_channels=30, gn_groups=16)
    with pytest.raises(ValueError, match="backbone 'vgg16'"):   # a torchvision model, but not a ResNet
        FCOS(backbone="vgg16")
    for bad in ({"nms_thresh": float("nan")}, {"score_thresh": float("inf")}, {"min_size": [0]},
                {"freeze_bn": 1}, {"strides": (8, 16)}):
        key = next(iter(bad))
        with pytest.raises(ValueError, match=f"^{key}: "):
            FCOSConfig(**bad)
    assert FCOSConfig.check({"fpn_channels": 64, "gn_groups": 16}) == []
    assert FCOSConfig.check({"colour": 1}) == ["colour: unknown key"]
    legacy = FCOSConfig.from_dict({**m.config.to_dict(), "winograd": True})   # checkpoints of earlier versions
    assert legacy == m.config
    with pytest.raises(TypeError):
        FCOS({"num_classes": 3})


def test_one_config_path():
    cfg = FCOSConfig(num_classes=3, fpn_channels=32, head_convs=1, min_size=96, max_size=160)
    assert FCOS(cfg).config is cfg
    assert FCOS(cfg, num_classes=5).config == FCOSConfig(**{**cfg.to_dict(), "num_classes": 5})
    assert FCOS().config == FCOSConfig()   # FCOS's defaults are FCOSConfig's


def test_set_decoding_changes_detections_not_weights():
    torch.manual_seed(0)
    m = tiny(score_thresh=0.0).eval()
    images = [torch.rand(3, 100, 120)]
    with torch.no_grad():
        many = m(images)[0]
        few = m.set_decoding(detections_per_img=3, nms_thresh=0.3)(images)[0]
    assert len(few["scores"]) == 3 and len(many["scores"]) > 3
    torch.testing.assert_close(few["scores"], many["scores"][:3])
    with pytest.raises(ValueError, match="backbone: not a decoding setting"):
        m.set_decoding(backbone="resnet34")
    with pytest.raises(ValueError, match="nms_thresh: must be"):
        m.set_decoding(nms_thresh=0)


def test_weights_from_a_local_state_dict_file(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    m = tiny(weights=str(path))
    torch.testing.assert_close(m.backbone.body.conv1.weight, ref.conv1.weight)
    torch.testing.assert_close(m.backbone.body.layer4.get_submodule("1.bn2").running_var, ref.layer4[1].bn2.running_var)
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a resnet18 state dict"):
        tiny(weights=str(tmp_path / "bad.pth"))


def test_freezing_options():
    m = tiny(freeze_bn=True, trainable_layers=2)
    body = m.backbone.body
    assert isinstance(body.bn1, torchvision.ops.FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in body.layer2.parameters())
    assert all(p.requires_grad for p in body.layer3.parameters())


def test_resnet50_builds_with_bottleneck_channels():
    m = FCOS(num_classes=2, backbone="resnet50", fpn_channels=32, head_convs=1, min_size=64, max_size=64).eval()
    with torch.no_grad():
        assert len(m([torch.rand(3, 64, 64)])) == 1
