"""Winograd F(4x4, 3x3) convolution equals direct convolution (float64 reference) and falls back where it
should (training, small maps, other dtypes, autocast)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcos import FCOS
from fcos.inference import for_inference
from fcos.winograd import WinogradConv2d, use_winograd


def reference(conv, x):
    bias = None if conv.bias is None else conv.bias.double()
    return F.conv2d(x.double(), conv.weight.double(), bias, padding=1)


@pytest.mark.parametrize("shape,bias,channels_last", [((1, 16, 8, 8), True, True), ((2, 8, 13, 7), True, False),
                                                      ((3, 5, 1, 30), False, True), ((1, 4, 37, 41), False, False)])
def test_winograd_matches_direct_convolution(shape, bias, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 6, 3, padding=1, bias=bias)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = WinogradConv2d.from_conv(conv, min_pixels=0)(x)
        want = reference(conv, x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5 * float(want.abs().max()))


def test_large_map_is_computed_in_chunks_with_the_same_result(monkeypatch):
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 30, 22)
    wino = WinogradConv2d.from_conv(conv, min_pixels=0)
    with torch.no_grad():
        whole = wino(x)
        monkeypatch.setattr("fcos.winograd.TILE_BUDGET", 7)   # 6 tiles per row: one row per chunk
        chunked = wino(x)
        want = reference(conv, x)
    # Not bit-equal on every CPU: oneDNN/MKL pick other matmul blockings for other tile counts (AVX512).
    scale = float(want.abs().max())
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(chunked.double(), want, rtol=0, atol=2e-5 * scale)


def test_small_maps_other_dtypes_and_autocast_run_the_convolution_itself():
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    wino = WinogradConv2d.from_conv(conv, min_pixels=100)
    with torch.no_grad():
        small = torch.randn(1, 4, 9, 11)   # 99 pixels
        assert torch.equal(wino(small), conv(small))
        conv64, x64 = conv.double(), torch.randn(1, 4, 12, 12, dtype=torch.float64)
        assert torch.equal(WinogradConv2d.from_conv(conv64, min_pixels=0)(x64), conv64(x64))
        big = torch.randn(1, 4, 12, 12)
        conv.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(WinogradConv2d.from_conv(conv, min_pixels=0)(big), conv(big))


def test_only_wide_3x3_stride_1_convolutions_are_replaced():
    net = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 3, stride=2, padding=1),
                        nn.Conv2d(32, 32, 1), nn.Conv2d(32, 16, 3, padding=1), nn.Conv2d(32, 32, 3, padding=2))
    assert use_winograd(net, min_channels=32) == 1
    assert [type(m).__name__ for m in net] == ["WinogradConv2d", "Conv2d", "Conv2d", "Conv2d", "Conv2d"]
    assert list(net.state_dict()) == list(nn.Sequential(*[nn.Conv2d(1, 1, 1) for _ in range(5)]).state_dict())
    with pytest.raises(ValueError, match="3x3 stride-1"):
        WinogradConv2d.from_conv(nn.Conv2d(4, 4, 3, stride=2, padding=1))


def test_training_runs_the_direct_convolution_and_the_kernel_cache_follows_the_weight():
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 5, 3, padding=1)
    wino = WinogradConv2d.from_conv(conv, min_pixels=0)
    x = torch.randn(2, 8, 11, 14)
    assert torch.equal(wino(x), conv(x))   # gradients on: direct convolution, bit for bit
    with torch.no_grad():   # Winograd with a cached kernel; an in-place weight update must reach the output
        before = wino(x)
        assert not torch.equal(before, conv(x))
        wino.weight.mul_(2)
        after = wino(x)
    bias = wino.bias[:, None, None].detach()
    torch.testing.assert_close(after - bias, 2 * (before - bias), rtol=1e-4, atol=1e-4)


def test_for_inference_with_winograd_equals_the_direct_copy():
    torch.manual_seed(0)
    model = FCOS(num_classes=3, fpn_channels=256, head_convs=1, gn_groups=32, min_size=256, max_size=320).eval()
    fast, direct = for_inference(model), for_inference(model, winograd=False)
    # ResNet-18 layer3 and layer4 3 each (not the strided first convs), FPN outputs 3, one per head tower;
    # at 256 x 320 the maps of P3, P4 and layer3 (32 x 40, 16 x 20) are large enough to run Winograd.
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) == 11
    assert not any(isinstance(m, WinogradConv2d) for m in [*direct.modules(), *model.modules()])
    assert fast.state_dict().keys() == direct.state_dict().keys()   # same keys: WinogradConv2d is a Conv2d
    images = [torch.rand(3, 256, 320), torch.rand(3, 200, 180)]
    with torch.no_grad():
        wanted, got = direct(images), fast(images)
    for want, have in zip(wanted, got):
        assert len(want["scores"]) > 0
        torch.testing.assert_close(have["scores"][:20], want["scores"][:20], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(have["boxes"][:5], want["boxes"][:5], rtol=1e-4, atol=1e-3)
