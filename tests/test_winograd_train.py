"""Winograd in training (fcos.winograd_train): its gradients are the direct convolution's (gradcheck in float64
on small shapes, a float32 bound on realistic ones), it runs only inside `training`, each layer shape is timed
once and the decision kept, and a model trained with it computes what the direct one does, to rounding."""
import functools

import pytest
import torch
from torch import nn

from fcos import FCOS, winograd
from fcos.inference import for_inference
from fcos.winograd import ShapeChoices, WinogradConv2d
from fcos.winograd_train import WinogradTrainConv2d, conv_levels, training, winograd_levels

LEVELS = [(9, 7), (2, 3), (1, 1)]   # partial tiles, maps smaller than one tile


def _outputs_and_grads(convs, xs, run, grads=None):
    outs = [y for ys in run(convs, xs) for y in ys]
    grads = grads or [torch.randn_like(y) for y in outs]
    params = [p for c in convs for p in c.parameters()]
    return outs, torch.autograd.grad(outs, params + list(xs), grads), grads


def _direct(convs, xs):
    return [[c(x) for x in xs] for c in convs]


@pytest.mark.parametrize("channels_last_in,channels_last_out", [(False, True), (True, True), (False, False)])
def test_gradients_pass_gradcheck_in_float64(channels_last_in, channels_last_out):
    torch.manual_seed(0)
    convs = [nn.Conv2d(3, 2, 3, padding=1).double(), nn.Conv2d(3, 1, 3, padding=1, bias=False).double()]
    fmt = torch.channels_last if channels_last_in else torch.contiguous_format
    xs = [torch.randn(2, 3, h, w, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
          for h, w in LEVELS]
    params = [p for c in convs for p in c.parameters()]
    run = functools.partial(winograd_levels, channels_last=channels_last_out)
    assert torch.autograd.gradcheck(lambda *_: tuple(y for ys in run(convs, xs) for y in ys), (*params, *xs))
    got, got_grads, grads = _outputs_and_grads(convs, xs, run)
    layout = torch.channels_last if channels_last_out else torch.contiguous_format
    assert all(y.is_contiguous(memory_format=layout) for y in got)
    want, want_grads, _ = _outputs_and_grads(convs, xs, _direct, grads)
    for a, b in zip([*got, *got_grads], [*want, *want_grads], strict=True):
        a, b = a.detach(), b.detach()
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12 * max(1.0, float(b.abs().max())))


def test_float32_outputs_and_gradients_match_float64_direct_convolution_to_rounding():
    torch.manual_seed(1)
    conv = nn.Conv2d(256, 256, 3, padding=1)
    nn.init.normal_(conv.weight, std=0.01)
    xs = [torch.randn(2, 256, h, w, requires_grad=True) for h, w in ((32, 40), (16, 20), (8, 10), (4, 5), (2, 3))]
    got, got_grads, grads = _outputs_and_grads([conv], xs, winograd_levels)
    ref = nn.Conv2d(256, 256, 3, padding=1).double()
    ref.load_state_dict(conv.state_dict())
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    want, want_grads, _ = _outputs_and_grads([ref], xs64, _direct, [g.double() for g in grads])
    # Winograd's rounding is ~1e-5 of the scale (the direct convolution's ~1e-6): bounded at 5e-5
    for a, b in zip([*got, *got_grads], [*want, *want_grads], strict=True):
        a, b = a.detach(), b.detach()
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=0, atol=5e-5 * float(b.abs().max()))


def _small_model():
    """freeze_bn: training-mode BatchNorm at batch 1 (20 values per channel in layer4) turns any 1e-6 change of
    the input into 10% of some backbone gradients (the direct convolutions' too), too ill-conditioned to compare."""
    torch.manual_seed(0)
    return FCOS(num_classes=3, fpn_channels=64, head_convs=2, gn_groups=16, min_size=128, max_size=160,
                freeze_bn=True).train()


def _loss_and_grads(model, mode=None):
    images = [torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1))]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([1])}]
    model.zero_grad(set_to_none=True)
    if mode is None:
        loss = model(images, targets)["final_loss"]
    else:
        with training(mode):
            loss = model(images, targets)["final_loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_outside_training_or_with_false_every_convolution_is_the_direct_one_and_with_true_the_same_to_rounding():
    model = _small_model()
    convs = [m for m in model.backbone.modules() if isinstance(m, WinogradTrainConv2d)]
    # ResNet-18's 13 stride-1 3x3 convolutions of layer1-4 and the FPN's 3 outputs; the head calls conv_levels
    assert len(convs) == 16 and type(model.head.cls_tower[0]) is nn.Conv2d
    assert list(model.state_dict()) == list(FCOS(model.config).state_dict())   # and the same as any FCOS's
    loss, grads = _loss_and_grads(model)
    loss_false, grads_false = _loss_and_grads(model, False)
    assert torch.equal(loss, loss_false) and all(torch.equal(grads[n], grads_false[n]) for n in grads)
    loss_true, grads_true = _loss_and_grads(model, True)
    assert not all(torch.equal(grads_true[n], grads[n]) for n in grads)   # it did run Winograd (the loss alone
    #                                                                       can round to the same float)
    torch.testing.assert_close(loss_true, loss, rtol=1e-5, atol=0)
    for name, g in grads.items():
        torch.testing.assert_close(grads_true[name], g, rtol=0, atol=5e-5 * float(g.abs().max()), msg=name)


def test_reruns_in_training_are_bit_identical():
    weights = []
    for _ in range(2):
        model = _small_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(2):
            _loss_and_grads(model, True)
            opt.step()
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.fixture
def choices(tmp_path, monkeypatch):
    """The process-wide decisions in a file of this test's own, and a count of the timings."""
    fresh = ShapeChoices(tmp_path / "winograd.json")
    monkeypatch.setattr(winograd, "CHOICES", fresh)
    timed = []
    real = winograd._min_times
    monkeypatch.setattr(winograd, "_min_times", lambda fns, x: timed.append(tuple(x.shape)) or real(fns, x))
    return fresh, timed


def test_auto_times_each_layer_shape_once_leaves_the_gradients_alone_and_follows_the_decision(choices):
    cache, timed = choices
    torch.manual_seed(2)
    convs = [nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)]
    xs = [torch.randn(2, 64, h, w, requires_grad=True) for h, w in ((16, 20), (8, 10))]
    rng = torch.get_rng_state()
    with training("auto"):
        outs = conv_levels(convs, xs)
    assert len(timed) == 1 and all(p.grad is None for c in convs for p in c.parameters())   # timed on copies
    assert torch.equal(torch.get_rng_state(), rng)   # and drew nothing: the run goes on as without timing
    (key, choice), = cache.choices.items()
    assert key == f"train b2 c64 o64+64 l16x20,8x10 g1 t{torch.get_num_threads()} nchw>nchw"
    with training("auto"):
        assert torch.equal(conv_levels(convs, xs)[1][0], outs[1][0]) and len(timed) == 1   # decided: no timing
        cache.choices[key] = not choice   # the recorded decision is what runs
        flipped = conv_levels(convs, xs)[1][0]
        conv_levels(convs, xs[:1])        # a new shape key is timed once
    assert torch.equal(flipped, convs[1](xs[0])) is choice and len(timed) == 2
    with training("auto"), torch.no_grad():   # no gradients: inference's business, direct here
        assert torch.equal(conv_levels(convs, xs)[0][1], convs[0](xs[1])) and len(timed) == 2
    narrow = nn.Conv2d(32, 32, 3, padding=1)   # under MIN_CHANNELS: direct without timing
    with training(True):
        x = torch.randn(1, 32, 8, 8, requires_grad=True)
        assert torch.equal(conv_levels([narrow], [x])[0][0], narrow(x)) and len(timed) == 2
    with pytest.raises(ValueError, match="winograd"), training("yes"):
        pass


def test_inference_copies_take_the_inference_winograd_and_training_modules_behave_as_conv2d():
    model = _small_model().eval()
    auto, wide = for_inference(model), for_inference(model, winograd=True)   # >= 64 and >= 256 channels
    assert not any(isinstance(m, WinogradTrainConv2d) for m in auto.modules())
    assert sum(isinstance(m, WinogradConv2d) for m in auto.modules()) == 16 + 4   # and the head towers
    assert all(m.in_channels < 256 for m in wide.modules() if isinstance(m, WinogradTrainConv2d))
    conv = next(m for m in model.modules() if isinstance(m, WinogradTrainConv2d))
    x = torch.randn(1, conv.in_channels, 12, 12)
    direct = nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.equal(conv(x), direct)   # outside `training`
    with training(True):
        assert not torch.equal(conv(x), direct)
        with torch.no_grad():
            assert torch.equal(conv(x), direct)


def test_the_replacement_draws_nothing_from_the_rng():
    """Building the Winograd training layers must not consume random numbers: the same seed gives the model
    the weights of plain nn.Conv2d layers (the FPN and head, built after the backbone, included)."""
    from fcos.winograd_train import use_winograd_in_training
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1))
    after = torch.rand(3)
    torch.manual_seed(0)
    again = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1))
    assert use_winograd_in_training(again) == 2
    assert torch.equal(torch.rand(3), after)
    assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), again.state_dict().values()))
    assert all(p.device.type == "cpu" for p in again.parameters())
