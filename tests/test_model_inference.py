"""Inference copies (BatchNorm folded, channels_last) give the detections of the original model."""
import pytest
import torch

from fcos import FCOS
from fcos.inference import _NORMS, fold_batchnorm, for_inference


def trained_stats_model(backbone="resnet18", freeze_bn=False):
    """A model whose BatchNorm statistics and affine terms are far from their initial values."""
    torch.manual_seed(0)
    model = FCOS(num_classes=3, backbone=backbone, fpn_channels=32, head_convs=1, gn_groups=8, min_size=96,
                 max_size=128, freeze_bn=freeze_bn)
    with torch.no_grad():
        for m in model.backbone.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def norms(model):
    return sum(isinstance(m, _NORMS) for m in model.modules())


@pytest.mark.parametrize("backbone,freeze_bn,expected", [("resnet18", False, 20), ("resnet18", True, 20),
                                                         ("resnet50", False, 53)])
def test_folding_keeps_features_and_detections(backbone, freeze_bn, expected):
    model = trained_stats_model(backbone, freeze_bn)
    images = [torch.rand(3, 96, 128), torch.rand(3, 110, 90)]
    fast = for_inference(model)
    assert norms(model) == expected and norms(fast) == 0 and not fast.training
    batch, _, _, _ = model.transform(images)
    with torch.no_grad():
        ref, got = model.backbone(batch), fast.backbone(batch)
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4 * float(a.abs().max()))   # float rounding only
        want, have = model(images), fast(images)
    for w, h in zip(want, have):
        assert len(w["scores"]) > 0
        torch.testing.assert_close(h["scores"][:20], w["scores"][:20], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(h["boxes"][:5], w["boxes"][:5], rtol=1e-4, atol=1e-3)


def test_original_model_is_untouched_and_folding_needs_eval_mode():
    model = trained_stats_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for_inference(model, channels_last=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model.train().backbone)


@pytest.mark.slow
def test_compiled_inference_copy_gives_the_same_detections():
    model = trained_stats_model()
    images = [torch.rand(3, 96, 128)]
    with torch.no_grad():
        want = model(images)[0]
        have = for_inference(model, compile=True)(images)[0]
    torch.testing.assert_close(have["scores"][:20], want["scores"][:20], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(have["boxes"][:5], want["boxes"][:5], rtol=1e-4, atol=1e-3)
