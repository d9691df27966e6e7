"""fcos-exp's FCOS against torchvision's FCOS with the same backbone, FPN, heads and input size:
training step and batch-1 inference, interleaved in one run; ratios and achieved GFLOP/s. fcos-exp is the
eager model; fcos-exp-fused is `fcos.inference.for_inference` (BatchNorm folded, channels_last, wide 3x3
convolutions as Winograd: what the evaluate/visualize/predict stages run), fcos-exp-fused-direct the same
with `winograd=False`; --compile adds torch.compile. GFLOP/s count each model's direct-convolution FLOPs,
so Winograd (fewer multiplications) can pass the matmul peak.

    python benchmarks/bench_model.py [--size 320] [--batch 4] [--rounds 5] [--compile]
"""
from __future__ import annotations

import argparse

import torch
from common import flops, interleave, matmul_peak_gflops, median
from torch import nn
from torchvision.models.detection import FCOS as TVFCOS
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from fcos import FCOS
from fcos.inference import for_inference


def build(size: int, classes: int = 20):
    torch.manual_seed(0)
    ours = FCOS(num_classes=classes, backbone="resnet18", fpn_channels=256, head_convs=4, gn_groups=32,
                min_size=size, max_size=size * 3 // 2)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256),
                                   norm_layer=nn.BatchNorm2d)
    theirs = TVFCOS(backbone, num_classes=classes, min_size=size, max_size=size * 3 // 2)
    return ours, theirs


def batch(n: int, size: int):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, size, size * 4 // 3, generator=g) for _ in range(n)]
    targets = []
    for _ in range(n):
        xy = torch.rand(5, 2, generator=g) * size * 0.6
        wh = torch.rand(5, 2, generator=g) * size * 0.4 + 8
        targets.append({"boxes": torch.cat((xy, xy + wh), 1), "labels": torch.randint(0, 20, (5,), generator=g)})
    return images, targets


def train_step(model, opt, images, targets, key):
    def step():
        losses = model(images, targets)
        loss = losses[key] if key in losses else sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time for_inference(compile=True)")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    peak = matmul_peak_gflops()
    ours, theirs = build(args.size)
    images, targets = batch(args.batch, args.size)

    models = {"fcos-exp": ours, "torchvision": theirs}
    for m in models.values():
        m.train()
    steps = {name: train_step(m, torch.optim.SGD(m.parameters(), lr=1e-4), images, targets, "final_loss")
             for name, m in models.items()}
    train_flops = {name: flops(fn) for name, fn in steps.items()}
    t = interleave(steps, args.rounds)

    for m in (ours, theirs):
        m.eval()
    one = images[:1]
    fast, fast_direct = for_inference(ours), for_inference(ours, winograd=False)
    infer = {"fcos-exp": lambda: ours(one), "fcos-exp-fused-direct": lambda: fast_direct(one),
             "fcos-exp-fused": lambda: fast(one), "torchvision": lambda: theirs(one)}
    if args.compile:
        compiled = for_inference(ours, compile=True)
        with torch.inference_mode():
            compiled(one)   # the compile (about a minute) stays out of the timing
        infer["fcos-exp-compiled"] = lambda: compiled(one)
    with torch.inference_mode():
        direct_flops = flops(infer["fcos-exp"])   # the other fcos-exp variants run the same convolutions
        infer_flops = {name: direct_flops for name in infer} | {"torchvision": flops(infer["torchvision"])}
        ti = interleave(infer, args.rounds * 2)

    print(f"CPU threads {torch.get_num_threads()}, matmul peak {peak:.1f} GFLOP/s; input {args.size}px, "
          f"train batch {args.batch}, {args.rounds} interleaved rounds (medians)")
    rows = (("train step", t, train_flops, args.batch), ("inference (batch 1)", ti, infer_flops, 1))
    for title, times, fl, n in rows:
        print(f"\n{title}")
        for name in times:
            m = median(times[name])
            print(f"  {name:17s} {m * 1000:8.1f} ms  {n / m:6.2f} img/s  {fl[name] / m / 1e9:6.1f} GFLOP/s "
                  f"({fl[name] / m / 1e9 / peak:.0%} of peak)")
        for name in (n for n in times if n != "torchvision"):
            print(f"  speed ratio {name} / torchvision: {median(times['torchvision']) / median(times[name]):.2f}x")


if __name__ == "__main__":
    main()
