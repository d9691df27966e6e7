"""Winograd F(4x4, 3x3) convolution equals direct convolution (float64 reference) and falls back where it
should (training, small maps, other dtypes, autocast); the autotuned choice is timed once per shape and kept
on disk."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcos import FCOS, winograd
from fcos.inference import for_inference
from fcos.winograd import ShapeChoices, WinogradConv2d, cache_path, use_winograd


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
    fast, direct = for_inference(model, winograd=True), for_inference(model, winograd=False)
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


@pytest.fixture
def choices(tmp_path, monkeypatch):
    """The process-wide decisions in a file of this test's own, and a count of the shapes timed."""
    fresh = ShapeChoices(tmp_path / "cache" / "winograd.json")
    monkeypatch.setattr(winograd, "CHOICES", fresh)
    timed = []
    real = winograd._min_times
    monkeypatch.setattr(winograd, "_min_times", lambda fns, x: timed.append(tuple(x.shape)) or real(fns, x))
    return fresh, timed


def test_autotune_times_each_shape_once_and_follows_the_recorded_choice(choices):
    cache, timed = choices
    torch.manual_seed(4)
    conv = nn.Conv2d(64, 64, 3, padding=1)
    wino = WinogradConv2d.from_conv(conv, min_pixels=0, autotune=True)
    x = torch.randn(1, 64, 20, 24).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        first = wino(x)
        assert timed == [(1, 64, 20, 24)] and len(cache.choices) == 1
        (key, choice), = cache.choices.items()
        assert key == f"b1 c64 o64 h20 w24 t{torch.get_num_threads()} nhwc"
        assert torch.equal(first, conv(x)) is not choice   # the first call already runs the chosen path
        assert wino.runs_winograd(x) is choice and not wino.runs_winograd(x.double())
        assert torch.equal(wino(x), first) and len(timed) == 1
        cache.choices[key] = not choice                     # the recorded decision is what runs, not a new timing
        assert torch.equal(wino(x), conv(x)) is choice and len(timed) == 1
        wino(x[:, :, :16])                                   # a new shape is timed once
        wino(torch.cat((x, x)))
    assert timed == [(1, 64, 20, 24), (1, 64, 16, 24), (2, 64, 20, 24)]
    assert json.loads(cache.path.read_text()) == cache.choices and len(cache.choices) == 3


def test_decisions_are_read_back_merged_and_bad_files_ignored(tmp_path, monkeypatch):
    path = tmp_path / "winograd.json"
    ShapeChoices(path).put("a", True)
    other = ShapeChoices(path)
    assert other.get("a") is True and other.get("b") is None
    ShapeChoices(path).put("b", False)   # a second process writes meanwhile: merged, nothing lost
    other.put("c", True)
    assert json.loads(path.read_text()) == {"a": True, "b": False, "c": True}
    for corrupt in ('{"a": tr', "[" * 100_000, '["a"]', '{"a": "yes"}'):   # ignored, then replaced
        path.write_text(corrupt)
        assert ShapeChoices(path).get("a") is None
    ShapeChoices(path).put("a", False)
    assert ShapeChoices(path).get("a") is False
    blocked = ShapeChoices(path / "not-a-folder.json")   # unwritable: the decision stays in the process
    blocked.put("a", True)
    assert blocked.get("a") is True and not (path / "not-a-folder.json").exists()
    monkeypatch.setenv("FCOS_EXP_CACHE", str(tmp_path / "elsewhere"))
    assert cache_path().parent == tmp_path / "elsewhere" and cache_path().name.startswith("winograd-")
    full = cache_path()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")   # oneDNN held to older kernels: other timings, other file
    assert cache_path() != full and cache_path().parent == full.parent


def test_for_inference_auto_times_wide_convolutions_and_keeps_the_detections(choices, monkeypatch):
    cache, timed = choices
    torch.manual_seed(0)
    model = FCOS(num_classes=3, fpn_channels=64, head_convs=1, gn_groups=16, min_size=128, max_size=160).eval()
    auto, direct = for_inference(model), for_inference(model, winograd=False)
    tuned = [m for m in auto.modules() if isinstance(m, WinogradConv2d)]
    # ResNet-18's layer1-4 (13 of their 16 3x3 convolutions: 3 are strided), FPN outputs 3, head towers 2
    assert len(tuned) == 18 and all(m.autotune for m in tuned)
    images = [torch.rand(3, 128, 160)]
    with torch.no_grad():
        want, got = model(images)[0], auto(images)[0]
        assert len(timed) == len(cache.choices) > 0   # maps of >= 256 pixels only: every new shape timed once
        auto(images)
        assert len(timed) == len(cache.choices)
        monkeypatch.setattr(winograd, "MARGIN", math.inf)   # Winograd never wins: exactly the direct copy
        monkeypatch.setattr(winograd, "CHOICES", ShapeChoices(cache.path.with_name("never.json")))
        assert torch.equal(auto(images)[0]["scores"], direct(images)[0]["scores"])
    assert len(want["scores"]) > 0
    torch.testing.assert_close(got["scores"][:20], want["scores"][:20], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["boxes"][:5], want["boxes"][:5], rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="winograd"):
        for_inference(model, winograd="yes")
