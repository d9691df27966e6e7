"""Winograd F(4x4, 3x3) convolution for float32 inference on CPU (Lavin & Gray, 2015).

Why our own: PyTorch's CPU convolution asks oneDNN for the direct algorithm (oneDNN's own Winograd exists
only for AVX512 CPUs); NNPACK's Winograd is reachable only through a private torch op, which failed on this
machine unless another convolution had run first. Here each 6x6 input tile is transformed by one small
matmul, the convolution becomes 36 matmuls [tiles, C] x [C, O] (4x fewer multiplications than direct 3x3),
and a second small matmul maps back to 4x4 output tiles. Outputs differ from direct convolution by float
rounding (~1e-5 of the output scale against ~2e-6). On a 2-core AVX2 CPU at batch 1 a 256-channel layer runs
1.4-1.5x faster from 20x28 to 80x112, 512 channels 1.7-2.3x; with fewer channels (the tile transforms cost a
fixed share) or on small maps it loses, so those keep the direct convolution. Training (gradients on) keeps
the direct convolution too: through autograd a batch-4 step gained 1.2x at 20x28-40x56 but lost up to 2x
on small and large maps (benchmarks/bench_winograd.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# F(4x4, 3x3): input transform B^T [6, 6], kernel transform G [6, 3], output transform A^T [4, 6].
_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
_M, _A = 4, 6   # output tile, input tile
TILE_BUDGET = 256   # tiles per chunk: big maps run ~1.3x faster in chunks that stay in cache


def _is_3x3_same(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


class WinogradConv2d(nn.Conv2d):
    """An nn.Conv2d (3x3, stride 1, padding 1; same parameters and state_dict) that runs F(4x4, 3x3) for
    float32 CPU inputs of at least `min_pixels` (H * W) with gradients off and outside autocast, and the
    direct convolution otherwise (training; CUDA, where cuDNN picks its own algorithm; small maps; other
    dtypes). The transformed kernel is kept until the weight changes."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, min_pixels: int = 256,
                 device=None):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias, device=device)
        self.min_pixels = min_pixels
        for name, m in (("g", _G), ("bt", _BT), ("at", _AT)):
            t = torch.tensor(m, dtype=torch.float32, device=self.weight.device)
            self.register_buffer(name, t if name == "g" else torch.kron(t, t), persistent=False)
        self._kernel_cache: tuple | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, min_pixels: int = 256) -> WinogradConv2d:
        """A WinogradConv2d sharing `conv`'s weight and bias Parameters."""
        if not _is_3x3_same(conv):
            raise ValueError(f"WinogradConv2d needs a 3x3 stride-1 padding-1 convolution, got {conv}")
        new = cls(conv.in_channels, conv.out_channels, conv.bias is not None, min_pixels, conv.weight.device)
        new.weight, new.bias = conv.weight, conv.bias
        return new

    def _kernel(self) -> Tensor:
        """G w G^T per (out, in) pair: [36, C, O], recomputed when the weight changes (in place or replaced)."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.device)
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            u = torch.einsum("ik,ockl,jl->ijco", self.g, w, self.g).reshape(_A * _A, w.shape[1], w.shape[0])
            self._kernel_cache = (key, u.contiguous())
        return self._kernel_cache[1]

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if (torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32
                or self.weight.dtype != torch.float32 or h * w < self.min_pixels or torch.is_autocast_enabled("cpu")):
            return super().forward(x)
        u = self._kernel()
        th, tw = -(-h // _M), -(-w // _M)   # 4x4 output tiles per column / row
        xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, tw * _M + 1 - w, 1, th * _M + 1 - h))   # [B, 4th+2, 4tw+2, C]
        tiles = xp.unfold(1, _A, _M).unfold(2, _A, _M).flatten(0, 1)            # [B*th, tw, C, 6, 6] view
        step = max(1, TILE_BUDGET // tw)   # rows of tiles per chunk (not a loop over images or levels)
        out = []
        for r in range(0, b * th, step):
            t = tiles[r:r + step]
            v = (self.bt @ t.permute(3, 4, 0, 1, 2).reshape(_A * _A, -1)).view(_A * _A, -1, c)
            m = torch.bmm(v, u)                                                 # [36, rows*tw, O]
            y = (self.at @ m.view(_A * _A, -1)).view(_M, _M, t.shape[0], tw, -1)
            out.append(y.permute(2, 0, 3, 1, 4))                                # [rows, 4, tw, 4, O]
        y = torch.cat(out).view(b, th * _M, tw * _M, -1)[:, :h, :w]
        y = y + self.bias if self.bias is not None else y.contiguous()
        return y.permute(0, 3, 1, 2)   # [B, O, H, W], channels_last strides


def use_winograd(module: nn.Module, min_channels: int = 256, min_pixels: int = 256) -> int:
    """Make every plain 3x3 stride-1 Conv2d of `module` with at least `min_channels` input and output
    channels a WinogradConv2d sharing its Parameters, in place. Returns the number replaced."""
    targets = [(name, m) for name, m in module.named_modules() if name and type(m) is nn.Conv2d
               and _is_3x3_same(m) and min(m.in_channels, m.out_channels) >= min_channels]
    for name, conv in targets:
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, WinogradConv2d.from_conv(conv, min_pixels))
    return len(targets)
