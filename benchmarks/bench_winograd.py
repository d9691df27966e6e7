"""Winograd F(4x4, 3x3) (fcos.winograd) against PyTorch's convolution (oneDNN, channels_last), batch 1,
per channel count and map size, interleaved; the ratio and the error against a float64 reference. The
crossover sets `WinogradConv2d.min_pixels`.

    python benchmarks/bench_winograd.py [--rounds 7]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from common import interleave, median
from fcos.winograd import WinogradConv2d

SHAPES = [(c, hw) for c in (64, 128, 256, 512) for hw in ((10, 14), (16, 16), (20, 28), (24, 32), (40, 56), (80, 112))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"CPU threads {torch.get_num_threads()}; batch 1, float32; medians of {args.rounds} interleaved rounds")
    print(f"{'C':>4} {'H x W':>9} {'conv ms':>8} {'wino ms':>8} {'ratio':>6} {'err conv':>9} {'err wino':>9}")
    for c, (h, w) in SHAPES:
        conv = nn.Conv2d(c, c, 3, padding=1).eval().to(memory_format=torch.channels_last)
        wino = WinogradConv2d(conv, min_pixels=0)
        x = torch.randn(1, c, h, w).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
            scale = float(ref.abs().max())
            err = [float((f(x).double() - ref).abs().max()) / scale for f in (conv, wino)]
            t = interleave({"conv": lambda: conv(x), "wino": lambda: wino(x)}, args.rounds)
        tc, tw = median(t["conv"]), median(t["wino"])
        print(f"{c:4d} {h:4d} x {w:<4d}{tc * 1000:8.2f} {tw * 1000:8.2f} {tc / tw:6.2f} {err[0]:9.1e} {err[1]:9.1e}")


if __name__ == "__main__":
    main()
