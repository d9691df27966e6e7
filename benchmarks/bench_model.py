"""fcos-exp's FCOS against torchvision's FCOS with the same backbone, FPN, heads and input size:
training step and batch-1 inference, interleaved in one run; ratios and achieved GFLOP/s against the CPU's
float32 peak (the best of several matmuls and oneDNN convolutions, `common.peak_gflops`). fcos-exp is the
eager model; fcos-exp-fused is `fcos.inference.for_inference` (BatchNorm folded, channels_last, Winograd where
timing on this machine picks it: what the evaluate/visualize/predict stages run); --winograd shows instead
its three Winograd settings side by side (fcos-exp-fused-auto, -wino: always, -direct: never) and how many
layers auto chose Winograd for; --compile adds torch.compile. GFLOP/s count each model's direct-convolution
FLOPs, so for a model running Winograd (fewer multiplications) they are "effective" and can pass 100% of peak.
The training step uses each project's optimizer as shipped (fcos-exp: fused SGD; torchvision's reference: SGD).

    python benchmarks/bench_model.py [--size 320] [--batch 4] [--rounds 5] [--winograd] [--compile]
"""
from __future__ import annotations

import argparse

import torch
from common import cpu_label, flops, interleave, median, peak_gflops
from torch import nn
from torchvision.models.detection import FCOS as TVFCOS
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from fcos import FCOS, winograd
from fcos.inference import for_inference
from fcos.optim import build_optimizer


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


def winograd_layers(model, images) -> tuple[int, int]:
    """(layers that ran Winograd on `images`, autotuned layers) of a for_inference(winograd="auto") copy."""
    layers = [m for m in model.modules() if isinstance(m, winograd.WinogradConv2d) and m.autotune]
    ran = set()
    hooks = [m.register_forward_hook(lambda m, inputs, _: ran.add(m) if m.runs_winograd(inputs[0]) else None)
             for m in layers]
    with torch.inference_mode():
        model(images)
    for h in hooks:
        h.remove()
    return len(ran), len(layers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--winograd", action="store_true", help="for_inference with winograd auto, True and False")
    ap.add_argument("--compile", action="store_true", help="also time for_inference(compile=True)")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    label = cpu_label()
    peak, peak_kernel = peak_gflops()
    ours, theirs = build(args.size)
    images, targets = batch(args.batch, args.size)

    models = {"fcos-exp": ours, "torchvision": theirs}
    for m in models.values():
        m.train()
    # Each optimizer as shipped: fcos-exp's build_optimizer (fused SGD, no decay on norms and biases),
    # torchvision's detection reference's SGD (momentum, weight decay, the default foreach step).
    opts = {"fcos-exp": build_optimizer(ours, "sgd", 1e-4, momentum=0.9, weight_decay=1e-4),
            "torchvision": torch.optim.SGD(theirs.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)}
    steps = {name: train_step(m, opts[name], images, targets, "final_loss")
             for name, m in models.items()}
    train_flops = {name: flops(fn) for name, fn in steps.items()}
    t = interleave(steps, args.rounds)

    for m in (ours, theirs):
        m.eval()
    one = images[:1]
    settings = {"-auto": "auto", "-wino": True, "-direct": False} if args.winograd else {"": "auto"}
    fused = {f"fcos-exp-fused{suffix}": for_inference(ours, winograd=w) for suffix, w in settings.items()}
    infer = {"fcos-exp": lambda: ours(one), **{name: lambda m=m: m(one) for name, m in fused.items()},
             "torchvision": lambda: theirs(one)}
    if args.compile:
        compiled = for_inference(ours, compile=True)
        with torch.inference_mode():
            compiled(one)   # the compile (about a minute) stays out of the timing
        infer["fcos-exp-compiled"] = lambda: compiled(one)
    with torch.inference_mode():
        direct_flops = flops(infer["fcos-exp"])   # the other fcos-exp variants run the same convolutions
        infer_flops = {name: direct_flops for name in infer} | {"torchvision": flops(infer["torchvision"])}
        ti = interleave(infer, args.rounds * 2)   # the warm-up round makes auto's timing decisions
    auto = fused["fcos-exp-fused-auto" if args.winograd else "fcos-exp-fused"]
    ran, tuned = winograd_layers(auto, one)
    wino = {name for name in fused if name.endswith("-wino") or (fused[name] is auto and ran)}

    print(f"{label} float32 peak {peak:.1f} GFLOP/s ({peak_kernel}); input {args.size}px, train batch {args.batch}, "
          f"{args.rounds} interleaved rounds (medians)")
    print(f"winograd auto: {ran} of {tuned} autotuned layers ran Winograd at batch 1 "
          f"(decisions cached in {winograd.CHOICES.path})")
    rows = (("train step", t, train_flops, args.batch), ("inference (batch 1)", ti, infer_flops, 1))
    for title, times, fl, n in rows:
        print(f"\n{title}")
        for name in times:
            m = median(times[name])
            gflops = fl[name] / m / 1e9
            kind = ", effective" if name in wino else ""
            print(f"  {name:21s} {m * 1000:8.1f} ms  {n / m:6.2f} img/s  {gflops:6.1f} GFLOP/s "
                  f"({gflops / peak:.0%} of peak{kind})")
        for name in (n for n in times if n != "torchvision"):
            print(f"  speed ratio {name} / torchvision: {median(times['torchvision']) / median(times[name]):.2f}x  "
                  f"{label}")
    if wino:
        print("\neffective: direct-convolution FLOPs / time; Winograd does fewer multiplications, so it can exceed "
              "100% of peak")


if __name__ == "__main__":
    main()
