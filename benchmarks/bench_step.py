"""Where a training step's time goes: convolutions (forward and backward) against everything else (data,
transform, assignment, losses, decoding, optimizer, Python), from torch.profiler over a few real steps.

    python benchmarks/bench_step.py [--size 256] [--batch 8] [--steps 4]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import cpu_label
from torch.profiler import ProfilerActivity, profile

from fcos import FCOS
from fcos.data import VOCDataset, build_loader, generate_shapes

CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution", "aten::thnn_conv2d",
            "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--fpn", type=int, default=64)
    ap.add_argument("--convs", type=int, default=2)
    args = ap.parse_args()
    root = generate_shapes(tempfile.mkdtemp(), num_trainval=args.batch * (args.steps + 1), num_test=1,
                           image_size=args.size)
    ds = VOCDataset(root, "trainval", train=True)
    loader = build_loader(ds, args.batch, shuffle=True)
    model = FCOS(num_classes=len(ds.classes), fpn_channels=args.fpn, head_convs=args.convs, min_size=args.size,
                 max_size=args.size * 2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = iter(loader)
    images, targets = next(it)
    model(images, targets)["final_loss"].backward()   # warm-up
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            images, targets = next(it)
            loss = model(images, targets)["final_loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS or "conv" in e.key.lower())
    print(f"{cpu_label()} {args.steps} steps of batch {args.batch} at {args.size}px (FPN {args.fpn}, {args.convs} "
          f"convs/tower): {wall / args.steps * 1000:.0f} ms/step")
    print(f"  convolutions (fwd+bwd): {conv / total:.1%} of profiled CPU time; everything else {1 - conv / total:.1%}")
    print("  top non-convolution ops:")
    others = sorted((e for e in events if not (e.key in CONV_OPS or "conv" in e.key.lower())),
                    key=lambda e: -e.self_cpu_time_total)[:8]
    for e in others:
        print(f"    {e.key:40s} {e.self_cpu_time_total / total:6.1%}")


if __name__ == "__main__":
    main()
