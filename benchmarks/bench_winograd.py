"""Winograd F(4x4, 3x3) against PyTorch's direct convolution (oneDNN), per channel count and map size,
interleaved: batch-1 inference (fcos.winograd, channels_last, as fcos.inference.for_inference runs it) and a
batch-4 training step (forward + backward of fcos.winograd_train, NCHW, one map); ratios, and the inference
error against a float64 reference. The crossover differs from CPU to CPU, which is why
`for_inference(winograd="auto")` and `train.winograd: auto` time each shape where they run.

    python benchmarks/bench_winograd.py [--rounds 5]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import cpu_label, interleave, median
from torch import nn

from fcos.winograd import WinogradConv2d
from fcos.winograd_train import winograd_levels

SHAPES = [(c, hw) for c in (64, 128, 256, 512) for hw in ((10, 14), (16, 16), (20, 28), (40, 56), (80, 112))]


def train_step(conv, x, grad, winograd=False):
    def step():
        x.grad = conv.weight.grad = conv.bias.grad = None
        (winograd_levels([conv], [x], channels_last=False)[0][0] if winograd else conv(x)).backward(grad)
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    label = cpu_label()
    print(f"{label} float32; medians of {args.rounds} interleaved rounds; ratio = direct time / Winograd time")
    print(f"{'C':>4} {'H x W':>9} | {'infer b1 ms':>11} {'wino':>7} {'ratio':>5} {'err dir':>8} {'err wino':>8} "
          f"| {'train b4 ms':>11} {'wino':>7} {'ratio':>5}")
    for c, (h, w) in SHAPES:
        conv = nn.Conv2d(c, c, 3, padding=1)
        wino = WinogradConv2d.from_conv(nn.Conv2d(c, c, 3, padding=1), min_pixels=0)
        wino.load_state_dict(conv.state_dict())
        x = torch.randn(4, c, h, w, requires_grad=True)
        grad = torch.randn(4, c, h, w)
        t_train = interleave({"conv": train_step(conv, x, grad), "wino": train_step(wino, x, grad, True)}, args.rounds)
        one = x[:1].detach().contiguous(memory_format=torch.channels_last)
        conv.to(memory_format=torch.channels_last), wino.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            ref = F.conv2d(one.double(), conv.weight.double(), conv.bias.double(), padding=1)
            scale = float(ref.abs().max())
            err = [float((f(one).double() - ref).abs().max()) / scale for f in (conv, wino)]
            t_inf = interleave({"conv": lambda c=conv, x=one: c(x), "wino": lambda w=wino, x=one: w(x)}, args.rounds)
        (ic, iw), (tc, tw) = ((median(t["conv"]), median(t["wino"])) for t in (t_inf, t_train))
        print(f"{c:4d} {h:4d} x {w:<4d}| {ic * 1000:11.2f} {iw * 1000:7.2f} {ic / iw:5.2f} {err[0]:8.1e} {err[1]:8.1e} "
              f"| {tc * 1000:11.1f} {tw * 1000:7.1f} {tc / tw:5.2f}  {label}")


if __name__ == "__main__":
    main()
