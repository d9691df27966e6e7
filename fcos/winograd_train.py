"""Winograd F(4x4, 3x3) in training: forward and backward of one or more 3x3 convolutions over several maps
(the FPN levels) in one call, chosen per layer shape by timing on this machine.

Why: on a CPU the head's 3x3 convolutions (shared by the five levels) are most of a training step, and
oneDNN runs them, forward and both backward passes, as direct convolutions. Here all the levels' 6x6 input
tiles are transformed into one matrix V [36, T, C] (T: tiles of every level), the forward is one batched
matmul V U [36, T, O] (U = G w G^T [36, C, O]), and the backward two more: dU = V^T dM and dV = dM U^T, with
dM = A dY A^T the output gradient in the Winograd domain; dV goes back to the input through B (the adjoint of
the input transform: overlapping tiles summed). That is the exact gradient of the computed forward, so it
differs from the direct convolution's only by float rounding (tests/test_winograd_train.py bounds it), and
it costs 4x fewer multiplications. Convolutions sharing their input (the first layers of the two towers) run
as one, with their kernels side by side; the small levels, slow alone, ride along with the large one.

Why timed: the transforms are memory-bound and the matmuls run on MKL, the direct convolution on oneDNN, so
which is faster depends on the CPU and the shape. As for inference (fcos/winograd.py), the first call of a
new shape key (batch, channels, outputs, every level's size, threads, layout) times the forward and backward
of both on that input and takes Winograd only when it is at least `winograd.MARGIN` faster; the decision is
kept with inference's in `winograd.CHOICES` (keys starting "train"), so a rerun on the machine makes the same
choice and gives bit-identical weights. Outside `training(...)` (the default) every convolution is direct.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import winograd
from .winograd import _is_3x3_same, transform_matrices, winograd_kernel

MIN_CHANNELS = 64   # narrower layers keep the direct convolution without timing: too little work per tile
_MODE: list = [False]   # the innermost `training` mode


@contextlib.contextmanager
def training(mode: bool | str = "auto"):
    """Within it, grad-enabled float32 CPU convolutions passed through `conv_levels` run as Winograd: "auto"
    where timing on this machine found it faster, True wherever eligible, False never (the direct
    convolution, bit for bit as outside)."""
    if mode not in ("auto", True, False):
        raise ValueError(f"winograd must be 'auto', True or False, got {mode!r}")
    _MODE.append(mode)
    try:
        yield
    finally:
        _MODE.pop()


def _geometry(xs: Sequence[Tensor]) -> list[tuple[int, ...]]:
    """Per map (B, H, W, tile rows, tile columns, first tile, end tile): its tiles' rows in V."""
    geo, start = [], 0
    for x in xs:
        b, _, h, w = x.shape
        th, tw = -(-h // 4), -(-w // 4)
        geo.append((b, h, w, th, tw, start, start + b * th * tw))
        start += b * th * tw
    return geo


def _kron_into(mat: Tensor, t: Tensor, out: Tensor) -> None:
    """out [m*m, N] (rows may be strided) = (mat (x) mat) t for mat [m, a], t [a*a, N] contiguous: two small
    matmuls over the tile's rows, then its columns (a third of the Kronecker matmul's work, and faster)."""
    m, a = mat.shape
    w = mat @ t.view(a, -1)                                                # [m, a * N]
    torch.matmul(mat, w.view(m, a, -1), out=out.view(m, m, -1))


def _kron_from(mat: Tensor, t: Tensor) -> Tensor:
    """(mat (x) mat) t -> [m*m, N] contiguous, for t [a*a, N] whose rows may be strided."""
    m, a = mat.shape
    w = torch.matmul(mat, t.view(a, a, -1))                                # [a, m, N]
    return (mat @ w.view(a, -1)).view(m * m, -1)


def _input_transform(x: Tensor, th: int, tw: int, bt: Tensor, out: Tensor) -> None:
    """B^T d B of every 6x6 tile of x [B, C, H, W] (zero-padded by 1) into out [36, tiles * C]."""
    h, w = x.shape[-2:]
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, tw * 4 + 1 - w, 1, th * 4 + 1 - h))   # [B, 4th+2, 4tw+2, C]
    _kron_into(bt, xp.unfold(1, 6, 4).unfold(2, 6, 4).permute(4, 5, 0, 1, 2, 3).reshape(36, -1), out)


def _output_transform(m: Tensor, g: tuple[int, ...], at: Tensor, sizes: list[int], biases: list[Tensor | None],
                      channels_last: bool) -> list[Tensor]:
    """A^T m A of one map's tiles m [36, tiles, sum(sizes)] -> one output [B, O_k, H, W] per convolution, its
    bias added, channels_last or contiguous."""
    b, h, w, th, tw = g[:5]
    y = _kron_from(at, m.reshape(36, -1)).view(4, 4, b, th, tw, -1)
    outs, start = [], 0
    for size, bias in zip(sizes, biases, strict=True):
        part = y[..., start:start + size]
        if channels_last:   # [B, th, 4, tw, 4, O_k]
            part, shape, bias_shape = part.permute(2, 3, 0, 4, 1, 5), (b, th * 4, tw * 4, size), (size,)
        else:               # [B, O_k, th, 4, tw, 4]
            part, shape, bias_shape = part.permute(2, 5, 3, 0, 4, 1), (b, size, th * 4, tw * 4), (size, 1, 1, 1, 1)
        out = m.new_empty(part.shape)
        torch.add(part, bias.view(bias_shape), out=out) if bias is not None else out.copy_(part)
        out = out.view(shape)
        if channels_last:
            out = out.permute(0, 3, 1, 2)
        if h % 4 or w % 4:
            out = out[:, :, :h, :w].contiguous(memory_format=torch.channels_last if channels_last
                                               else torch.contiguous_format)
        outs.append(out)
        start += size
    return outs


def _fold(dt: Tensor, g: tuple[int, ...]) -> Tensor:
    """The adjoint of the input transform's tiling: dt [6, 6, B, th, tw, C] (gradient per tile position)
    -> [B, C, H, W], overlapping tiles summed (columns, then rows) and the zero padding cut off."""
    b, h, w, th, tw = g[:5]
    c = dt.shape[-1]
    cols = dt.new_empty(6, b, th, tw + 1, 4, c)   # tile column j's positions 4, 5 are column j+1's 0, 1
    cols[:, :, :, tw].zero_()
    cols[:, :, :, :tw] = dt[:, :4].permute(0, 2, 3, 4, 1, 5)
    cols[:, :, :, 1:, :2] += dt[:, 4:].permute(0, 2, 3, 4, 1, 5)
    cols = cols.view(6, b, th, (tw + 1) * 4, c)
    rows = dt.new_empty(b, th + 1, 4, (tw + 1) * 4, c)
    rows[:, th].zero_()
    rows[:, :th] = cols[:4].permute(1, 2, 0, 3, 4)
    rows[:, 1:, :2] += cols[4:].permute(1, 2, 0, 3, 4)
    return rows.view(b, th * 4 + 4, tw * 4 + 4, c)[:, 1:h + 1, 1:w + 1].permute(0, 3, 1, 2)


class _Levels(torch.autograd.Function):
    """(u [36, C, O], sizes, channels_last, *biases, *maps) -> the outputs of every convolution on every map,
    convolution-major (O = sum(sizes): the convolutions' kernels side by side)."""

    @staticmethod
    def forward(ctx, u: Tensor, sizes: list[int], channels_last: bool, *args: Tensor | None):
        biases, xs = list(args[:len(sizes)]), args[len(sizes):]
        bt, _, at = transform_matrices(u.dtype, u.device, kron=False)
        geo = _geometry(xs)
        c = u.shape[1]
        v = u.new_empty(36, geo[-1][6], c)
        for x, g in zip(xs, geo):
            _input_transform(x, g[3], g[4], bt, v[:, g[5]:g[6]].view(36, -1))
        m = torch.bmm(v, u)                                                     # [36, T, O]
        outs = [_output_transform(m[:, g[5]:g[6]], g, at, sizes, biases, channels_last) for g in geo]   # [map][conv]
        ctx.save_for_backward(v, u)
        ctx.geo, ctx.sizes, ctx.has_bias = geo, sizes, [b is not None for b in biases]
        return tuple(outs[i][k] for k in range(len(sizes)) for i in range(len(xs)))

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        v, u = ctx.saved_tensors
        geo, sizes = ctx.geo, ctx.sizes
        bt, _, at = transform_matrices(u.dtype, u.device, kron=False)
        n = len(geo)
        dm = u.new_empty(36, v.shape[1], u.shape[2])
        for i, (b, h, w, th, tw, t0, t1) in enumerate(geo):
            gt = u.new_zeros(4, 4, b, th, tw, u.shape[2])   # the output gradient in tile order (zero padding)
            start = 0
            for k, size in enumerate(sizes):
                gy = grads[k * n + i]
                if gy is not None:
                    gy = F.pad(gy.permute(0, 2, 3, 1), (0, 0, 0, tw * 4 - w, 0, th * 4 - h))
                    gt[..., start:start + size] = gy.reshape(b, th, 4, tw, 4, size).permute(2, 4, 0, 1, 3, 5)
                start += size
            _kron_into(at.t(), gt.view(16, -1), dm[:, t0:t1].view(36, -1))
        du = torch.bmm(v.transpose(1, 2), dm) if ctx.needs_input_grad[0] else None
        dbias: list[Tensor | None] = []
        for k, has in enumerate(ctx.has_bias):
            gs = [g.sum((0, 2, 3)) for g in grads[k * n:(k + 1) * n] if g is not None]
            dbias.append(torch.stack(gs).sum(0) if has and gs and ctx.needs_input_grad[3 + k] else None)
        dxs: list[Tensor | None] = [None] * n
        needs_x = ctx.needs_input_grad[3 + len(sizes):]
        if any(needs_x):
            dv = torch.bmm(dm, u.transpose(1, 2))                               # [36, T, C]
            for i, g in enumerate(geo):
                if needs_x[i]:
                    dt = _kron_from(bt.t(), dv[:, g[5]:g[6]].reshape(36, -1)).view(6, 6, *g[:1], *g[3:5], -1)
                    dxs[i] = _fold(dt, g)
        return (du, None, None, *dbias, *dxs)


def _winograd(weights: Sequence[Tensor], biases: Sequence[Tensor | None], xs: Sequence[Tensor],
              channels_last: bool) -> list[list[Tensor]]:
    weight = torch.cat(list(weights)) if len(weights) > 1 else weights[0]
    sizes = [w.shape[0] for w in weights]
    flat = _Levels.apply(winograd_kernel(weight), sizes, channels_last, *biases, *xs)
    return [list(flat[k * len(xs):(k + 1) * len(xs)]) for k in range(len(weights))]


def winograd_levels(convs: Sequence[nn.Conv2d], xs: Sequence[Tensor], channels_last: bool = True) -> list[list[Tensor]]:
    """outs[k][i] = convs[k](xs[i]) computed as Winograd F(4x4, 3x3) in one call, differentiable; outputs
    channels_last (the tile order: no transposition) or contiguous."""
    return _winograd([c.weight for c in convs], [c.bias for c in convs], xs, channels_last)


def _direct(convs: Sequence[nn.Conv2d], xs: Sequence[Tensor]) -> list[list[Tensor]]:
    return [[c(x) for x in xs] for c in convs]


def _eligible(convs: Sequence[nn.Conv2d], xs: Sequence[Tensor]) -> bool:
    x = xs[0]
    return (_MODE[-1] is not False and torch.is_grad_enabled() and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")
            and all(t.dtype == torch.float32 and t.dim() == 4 and t.shape[:2] == x.shape[:2] for t in xs)
            and all(_is_3x3_same(c) and c.weight.dtype == torch.float32 and c.in_channels == x.shape[1]
                    and min(c.in_channels, c.out_channels) >= MIN_CHANNELS for c in convs))


def _is_channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _key(convs: Sequence[nn.Conv2d], xs: Sequence[Tensor], channels_last: bool) -> str:
    """The decision's key: batch, channels, outputs, the maps' sizes, input grad, threads, layout in > out."""
    b, c = xs[0].shape[:2]
    layout = f"{'nhwc' if _is_channels_last(xs[0]) else 'nchw'}>{'nhwc' if channels_last else 'nchw'}"
    maps = ",".join(f"{x.shape[2]}x{x.shape[3]}" for x in xs)
    return (f"train b{b} c{c} o{'+'.join(str(m.out_channels) for m in convs)} l{maps} g{int(xs[0].requires_grad)} "
            f"t{torch.get_num_threads()} {layout}")


def _timed_choice(convs: Sequence[nn.Conv2d], xs: Sequence[Tensor], channels_last: bool) -> bool:
    """Whether Winograd's forward + backward on xs beat the direct convolution's by winograd.MARGIN, timed
    on detached tensors (the model's gradients untouched; no module built, so the RNG is untouched too)."""
    weights = [c.weight.detach().requires_grad_() for c in convs]
    biases = [None if c.bias is None else c.bias.detach().requires_grad_() for c in convs]
    inputs = [x.detach().requires_grad_(x.requires_grad) for x in xs]
    wrt = [t for t in [*weights, *biases, *inputs] if t is not None and t.requires_grad]

    def direct():
        return [[F.conv2d(x, w, b, padding=1) for x in inputs] for w, b in zip(weights, biases)]

    def step(run):
        def fn(_):
            outs = [y for ys in run() for y in ys]
            torch.autograd.grad(outs, wrt, [torch.ones_like(y) for y in outs])
        return fn
    times = winograd._min_times((step(direct), step(lambda: _winograd(weights, biases, inputs, channels_last))),
                                xs[0])
    return times[0] >= winograd.MARGIN * times[1]


def _use_winograd(convs: Sequence[nn.Conv2d], xs: Sequence[Tensor], channels_last: bool) -> bool:
    """Inside `training`: whether convs on xs run as Winograd (mode True, or "auto" and timed faster)."""
    if not _eligible(convs, xs):
        return False
    if _MODE[-1] is True:
        return True
    key = _key(convs, xs, channels_last)
    choice = winograd.CHOICES.get(key)
    if choice is None:
        choice = _timed_choice(convs, xs, channels_last)
        winograd.CHOICES.put(key, choice)
    return choice


def conv_levels(convs: Sequence[nn.Conv2d], xs: Sequence[Tensor]) -> list[list[Tensor]]:
    """outs[k][i] = convs[k](xs[i]) for 3x3 convolutions `convs` sharing their inputs `xs` (maps of any sizes,
    the same batch and channels): inside `training` as one Winograd call where it is chosen (see the module
    docstring), else each convolution on each map, exactly as calling them. Winograd's outputs take the
    inputs' memory format, so that the network around keeps its own. Outside `training` the input is not
    even looked at (torch.export traces this code: a layout test would be a data-dependent branch)."""
    if _MODE[-1] is False:
        return _direct(convs, xs)
    channels_last = _is_channels_last(xs[0])
    if _use_winograd(convs, xs, channels_last):
        return winograd_levels(convs, xs, channels_last)
    return _direct(convs, xs)


class WinogradTrainConv2d(nn.Conv2d):
    """An nn.Conv2d (same parameters and state_dict; 3x3, stride 1, padding 1) that inside `training` runs as
    Winograd where chosen for its input's shape, its output in the input's memory format (so that the
    network around it keeps its own), and outside it is exactly nn.Conv2d."""

    def forward(self, x: Tensor) -> Tensor:
        if _MODE[-1] is False:   # outside `training`: nn.Conv2d itself, nothing about x looked at
            return super().forward(x)
        channels_last = _is_channels_last(x)
        if _use_winograd([self], [x], channels_last):
            return winograd_levels([self], [x], channels_last)[0][0]
        return super().forward(x)


def use_winograd_in_training(module: nn.Module) -> int:
    """Make every plain 3x3 stride-1 Conv2d of `module` with >= MIN_CHANNELS input and output channels a
    WinogradTrainConv2d sharing its Parameters, in place; returns the number replaced. The new layers are built
    on the meta device, so that their own (discarded) initialisation draws nothing from the RNG: a seed gives
    the model the weights it gave before the replacement existed."""
    targets = [(name, m) for name, m in module.named_modules() if name and type(m) is nn.Conv2d
               and _is_3x3_same(m) and min(m.in_channels, m.out_channels) >= MIN_CHANNELS]
    for name, conv in targets:
        new = WinogradTrainConv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None,
                                  device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, new)
    return len(targets)
