"""fcos-exp's FCOS against torchvision's FCOS with the same backbone, FPN, heads and input size:
training step and batch-1 inference, interleaved in one run; ratios and achieved GFLOP/s against the CPU's
peak for the path's dtype (the best of several matmuls and oneDNN convolutions in float32, and in bfloat16
where the CPU runs it natively: `common.peak_gflops`), so the gap to the limit stays visible.

Training: fcos-exp is the step as `fcos.engine.fit` runs it by default (`train.winograd: auto`: 3x3
convolutions as Winograd where timing on this machine picks it, fcos/winograd_train.py; `train.channels_last`),
fcos-exp-direct the same with `train.winograd: false`; torchvision as shipped (NCHW) and, for a like-for-like
memory format, torchvision-cl (channels_last); `--amp bf16` adds both models under bfloat16 autocast. Inference:
fcos-exp is the eager model; fcos-exp-fused is `fcos.inference.for_inference` (BatchNorm folded,
channels_last, Winograd where timing picks it: what the evaluate/visualize/predict stages run); --winograd
shows instead its three Winograd settings side by side (fcos-exp-fused-auto, -wino: always, -direct:
never); --compile adds torch.compile. GFLOP/s count each model's direct-convolution FLOPs, so for a path
running Winograd (fewer multiplications) they are "effective" and can pass 100% of peak. The training step
uses each project's optimizer as shipped (fcos-exp: fused SGD; torchvision's reference: SGD).
--cpu-time (one thread only) times by the process's CPU time: on a machine shared with other jobs the
ratios are then those of the work done, not of the share of the CPU each candidate got.

    python benchmarks/bench_model.py [--size 320] [--batch 4] [--rounds 5] [--amp bf16] [--winograd]
                                     [--compile] [--cpu-time]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from common import cpu_label, flops, interleave, median, peak_gflops
from torch import nn
from torchvision.models.detection import FCOS as TVFCOS
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from fcos import FCOS, winograd, winograd_train
from fcos.config import TrainConfig
from fcos.engine import _cpu_has_bf16
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


def train_step(model, opt, images, targets, key, winograd_mode=False, amp="none"):
    """One training step as the engine runs it: forward inside winograd_train.training and autocast."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16")

    def step():
        with autocast, winograd_train.training(winograd_mode):
            losses = model(images, targets)
        loss = losses[key] if key in losses else sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def winograd_calls(step) -> tuple[int, int]:
    """(convolution calls that ran Winograd in one call of `step`, calls that could): a benchmark's count."""
    real, ran = winograd_train._use_winograd, []

    def counting(convs, xs, channels_last):
        chosen = real(convs, xs, channels_last)
        if winograd_train._eligible(convs, xs):
            ran.append(chosen)
        return chosen
    winograd_train._use_winograd = counting
    try:
        step()
    finally:
        winograd_train._use_winograd = real
    return sum(ran), len(ran)


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


def optimizers(name, model):
    """Each optimizer as shipped: fcos-exp's build_optimizer (fused SGD, no decay on norms and biases),
    torchvision's detection reference's SGD (momentum, weight decay, the default foreach step)."""
    if name.startswith("fcos-exp"):
        return build_optimizer(model, "sgd", 1e-4, momentum=0.9, weight_decay=1e-4)
    return torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--amp", choices=("none", "bf16"), default="none", help="also time training under bf16 autocast")
    ap.add_argument("--winograd", action="store_true", help="for_inference with winograd auto, True and False")
    ap.add_argument("--compile", action="store_true", help="also time for_inference(compile=True)")
    ap.add_argument("--cpu-time", action="store_true", help="time by process CPU time (needs one thread)")
    args = ap.parse_args()
    if args.cpu_time and torch.get_num_threads() != 1:
        ap.error("--cpu-time needs one thread (OMP_NUM_THREADS=1): with more it would count their waiting")
    clock = time.process_time if args.cpu_time else time.perf_counter
    label = cpu_label()
    native_bf16 = _cpu_has_bf16()
    peaks = {"float32": peak_gflops(torch.float32, clock=clock)}
    if native_bf16:
        peaks["bfloat16"] = peak_gflops(torch.bfloat16, clock=clock)
    ours, theirs = build(args.size)
    images, targets = batch(args.batch, args.size)

    # Training: (model, winograd mode, amp) per row; copies so that each row's optimizer steps its own weights.
    # fcos-exp in the engine's memory format (train.channels_last); torchvision as shipped, and in that format.
    cfg = TrainConfig()
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    trained = copy.deepcopy(ours).to(memory_format=layout)   # `ours` stays as built for the inference rows
    rows = {"fcos-exp": (trained, cfg.winograd, "none"), "fcos-exp-direct": (copy.deepcopy(trained), False, "none"),
            "torchvision": (theirs, False, "none")}
    if cfg.channels_last:
        rows["torchvision-cl"] = (copy.deepcopy(theirs).to(memory_format=layout), False, "none")
    if args.amp == "bf16":
        rows |= {"fcos-exp-bf16": (copy.deepcopy(trained), False, "bf16"),
                 "torchvision-bf16": (copy.deepcopy(theirs), False, "bf16")}
    steps = {}
    for name, (model, mode, amp) in rows.items():
        model.train()
        steps[name] = train_step(model, optimizers(name, model), images, targets, "final_loss", mode, amp)
    # FLOPs of the direct convolutions (what a Winograd row is "effective" against); bf16 rows: the same ops.
    direct_flops = {"fcos-exp": flops(steps["fcos-exp-direct"]), "torchvision": flops(steps["torchvision"])}
    train_flops = {name: direct_flops["torchvision" if name.startswith("torchvision") else "fcos-exp"] for name in rows}
    t = interleave(steps, args.rounds, clock=clock)   # the warm-up round makes auto's timing decisions
    ran, eligible = winograd_calls(steps["fcos-exp"])

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
        direct = flops(infer["fcos-exp"])   # the other fcos-exp variants run the same convolutions
        infer_flops = {name: direct for name in infer} | {"torchvision": flops(infer["torchvision"])}
        ti = interleave(infer, args.rounds * 2, clock=clock)   # the warm-up round makes auto's timing decisions
    auto = fused["fcos-exp-fused-auto" if args.winograd else "fcos-exp-fused"]
    ran_infer, tuned = winograd_layers(auto, one)
    wino_infer = {name for name in fused if name.endswith("-wino") or (fused[name] is auto and ran_infer)}
    wino_train = {"fcos-exp"} if ran else set()

    timing = "process CPU time, 1 thread" if args.cpu_time else "wall clock"
    print(f"{label} input {args.size}px, train batch {args.batch}, {args.rounds} interleaved rounds "
          f"(medians, {timing})")
    for dtype, (peak, kernel) in peaks.items():
        print(f"  {dtype} peak {peak:.1f} GFLOP/s ({kernel})")
    if not native_bf16:
        print("  bfloat16: not native on this CPU (no AVX512-BF16 or AMX): emulated, no peak measured")
    print(f"winograd in training: {ran} of {eligible} eligible convolution calls ran Winograd in a step; "
          f"at inference {ran_infer} of {tuned} autotuned layers at batch 1 "
          f"(decisions cached in {winograd.CHOICES.path})")
    tables = (("train step", t, train_flops, args.batch, wino_train),
              ("inference (batch 1)", ti, infer_flops, 1, wino_infer))
    for title, times, fl, n, wino in tables:
        print(f"\n{title}")
        for name in times:
            m = median(times[name])
            gflops = fl[name] / m / 1e9
            dtype = "bfloat16" if name.endswith("-bf16") else "float32"
            limit = f"{gflops / peaks[dtype][0]:.0%} of {dtype} peak" if dtype in peaks else "bfloat16 emulated"
            kind = ", effective" if name in wino else ""
            print(f"  {name:21s} {m * 1000:8.1f} ms  {n / m:6.2f} img/s  {gflops:6.1f} GFLOP/s ({limit}{kind})")
        for name in times:
            bases = ["torchvision-bf16"] if name.endswith("-bf16") else ["torchvision", "torchvision-cl"]
            for base in (b for b in bases if b in times and name != b and not name.startswith("torchvision")):
                print(f"  speed ratio {name} / {base}: {median(times[base]) / median(times[name]):.2f}x  {label}")
    if wino_train or wino_infer:
        print("\neffective: direct-convolution FLOPs / time; Winograd does fewer multiplications, so it can exceed "
              "100% of peak")


if __name__ == "__main__":
    main()
