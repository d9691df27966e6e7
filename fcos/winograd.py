"""Winograd F(4x4, 3x3) convolution for float32 CPU inference (Lavin & Gray, 2015).

Why our own: PyTorch's CPU convolution asks oneDNN for the direct algorithm (oneDNN's own Winograd
exists only for AVX512 CPUs); NNPACK's Winograd is reachable only through a private torch op, which failed on this machine
unless another convolution had run first. Here each 6x6 input tile is transformed by one small matmul, the
convolution becomes 36 matmuls [tiles, C] x [C, O] (4x fewer multiplications than direct 3x3), and a second
small matmul maps back to 4x4 output tiles. Outputs differ from direct convolution by float rounding
(~4e-5 of the output scale against ~1e-5). On a 2-core AVX2 CPU a 256-channel layer at 40x56 runs ~1.7x
faster, 512 channels ~2x; with fewer channels (the tile transforms cost a fixed share) or on small maps it
loses, so those keep the convolution (benchmarks/bench_winograd.py).
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


def supports(conv: nn.Module) -> bool:
    """A 3x3, stride-1, padding-1, ungrouped, undilated float Conv2d with zero padding."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


class WinogradConv2d(nn.Module):
    """Inference stand-in for a 3x3 `conv` (see `supports`): float32 CPU inputs of at least `min_pixels`
    (H * W) go through F(4x4, 3x3); anything else (CUDA, autocast, small maps) runs `conv` itself."""

    def __init__(self, conv: nn.Conv2d, min_pixels: int = 256):
        super().__init__()
        if not supports(conv):
            raise ValueError(f"WinogradConv2d needs a 3x3 stride-1 padding-1 Conv2d, got {conv}")
        self.conv, self.min_pixels = conv, min_pixels
        g, bt, at = (torch.tensor(m, dtype=torch.float64, device=conv.weight.device) for m in (_G, _BT, _AT))
        with torch.no_grad():
            u = torch.einsum("ik,ockl,jl->ijco", g, conv.weight.double(), g)   # [6, 6, C, O]
        self.register_buffer("u", u.reshape(_A * _A, conv.in_channels, conv.out_channels).float())
        self.register_buffer("bt", torch.kron(bt, bt).float())   # [36, 36] on flattened 6x6 tiles
        self.register_buffer("at", torch.kron(at, at).float())   # [16, 36]

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if (x.device.type != "cpu" or x.dtype != torch.float32 or h * w < self.min_pixels
                or torch.is_autocast_enabled("cpu")):
            return self.conv(x)
        th, tw = -(-h // _M), -(-w // _M)   # 4x4 output tiles per column / row
        xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, tw * _M + 1 - w, 1, th * _M + 1 - h))   # [B, 4th+2, 4tw+2, C]
        tiles = xp.unfold(1, _A, _M).unfold(2, _A, _M).flatten(0, 1)            # [B*th, tw, C, 6, 6] view
        out = x.new_empty(b * th, _M, tw, _M, self.u.shape[-1])
        step = max(1, TILE_BUDGET // tw)   # rows of tiles per chunk: keeps the 36 matrices in cache
        for r in range(0, b * th, step):
            t = tiles[r:r + step]
            n = t.shape[0] * tw
            v = (self.bt @ t.permute(3, 4, 0, 1, 2).reshape(_A * _A, -1)).view(_A * _A, n, c)
            m = torch.bmm(v, self.u)                                            # [36, n, O]
            y = (self.at @ m.view(_A * _A, -1)).view(_M, _M, t.shape[0], tw, -1)
            out[r:r + step] = y.permute(2, 0, 3, 1, 4)
        y = out.view(b, th * _M, tw * _M, -1)[:, :h, :w]
        y = y + self.conv.bias if self.conv.bias is not None else y.contiguous()
        return y.permute(0, 3, 1, 2)   # [B, O, H, W], channels_last strides


def use_winograd(module: nn.Module, min_channels: int = 256, min_pixels: int = 256) -> int:
    """Replace every supported 3x3 convolution of `module` with at least `min_channels` input and output
    channels by a WinogradConv2d, in place. Returns the number replaced."""
    targets = [(name, m) for name, m in module.named_modules()
               if name and supports(m) and min(m.in_channels, m.out_channels) >= min_channels]
    for name, conv in targets:
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, WinogradConv2d(conv, min_pixels))
    return len(targets)
