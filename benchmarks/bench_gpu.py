"""fcos-exp against torchvision's FCOS on a GPU, same backbone, FPN, heads, input size and precision (fp16),
interleaved in one process: training step (batch 8 and 16) and inference (batch 1 and 8) for ResNet-18 and
ResNet-50 at 512 and 800 px short side. Per model: ms, images/s and peak GPU memory; per configuration the
time split (transform, network, assignment + losses or decoding, backward + optimizer) from a separate run
with a sync at each boundary; then the data-loading share of a real training epoch on the embedded shapes.

Models: fcos-exp (the training default, NCHW), fcos-exp-cl (channels_last), fcos-exp-fused
(fcos.inference.for_inference: BatchNorm folded, channels_last; what evaluate/visualize/predict run) and
torchvision's FCOS built alike (resnet_fpn_backbone with LastLevelP6P7, BatchNorm), holding the same random
weights (the architectures match layer for layer: fcos.interop renames the head's; fcos-exp's per-level
scales are 1 for inference), so both score the same points and decode and suppress as many boxes. Random
weights score almost every point above the 0.05 threshold and predict empty boxes (the ReLU of noise around
0), which no trained model does, so for inference the box regression bias is set to 2 strides per side and
the classification bias to each of --priors: 0.002 leaves hundreds to thousands of candidates per image for
the top-k and NMS, 0.0005 far fewer (candidates and detections per image are reported). Each model gets its
targets as its own training loop hands them over: fcos-exp's engine keeps them on the host, torchvision's
reference scripts move them to the GPU first (outside the timed step).

    python benchmarks/bench_gpu.py [--json out.json] [--budget 600] [--rounds 10] [--priors 0.002 0.0005]
    python benchmarks/bench_gpu.py --quick      # a short dry run, also on a CPU
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
import traceback

import torch
import torchvision
from common import interleave, median
from torch import nn
from torchvision.models.detection import FCOS as TVFCOS
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from fcos import FCOS
from fcos.inference import for_inference
from fcos.interop import torchvision_state_dict

CLASSES = 20


def build(backbone: str, size: int, device: torch.device):
    """fcos-exp, its channels_last twin and torchvision's FCOS, same config and weights."""
    max_size = size * 5 // 3
    torch.manual_seed(0)
    ours = FCOS(num_classes=CLASSES, backbone=backbone, fpn_channels=256, head_convs=4, gn_groups=32,
                min_size=size, max_size=max_size).to(device)
    body = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=5, returned_layers=[2, 3, 4],
                               extra_blocks=LastLevelP6P7(256, 256), norm_layer=nn.BatchNorm2d)
    theirs = TVFCOS(body, num_classes=CLASSES, min_size=size, max_size=max_size, score_thresh=0.05, nms_thresh=0.6,
                    detections_per_img=100, topk_candidates=1000).to(device)
    theirs.load_state_dict(torchvision_state_dict(ours))
    return {"fcos-exp": ours, "fcos-exp-cl": copy.deepcopy(ours).to(memory_format=torch.channels_last),
            "torchvision": theirs}


def batch(n: int, size: int, device: torch.device, seed: int = 1):
    """n images of size x 4/3 size on the device, 5 random boxes each (targets on the host)."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size * 4 // 3, generator=g).to(device) for _ in range(n)]
    targets = []
    for _ in range(n):
        xy = torch.rand(5, 2, generator=g) * size * 0.6
        wh = torch.rand(5, 2, generator=g) * size * 0.4 + 8
        targets.append({"boxes": torch.cat((xy, xy + wh), 1), "labels": torch.randint(0, CLASSES, (5,), generator=g)})
    return images, targets


class Env:
    """Device, precision and the measuring helpers."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.amp = torch.float16 if self.cuda else None   # fp16 autocast is a CUDA thing

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def measured(self, fn, name: str, peaks: dict):
        """fn, synchronised, recording the memory it allocates on top of what was there (peak)."""
        def run():
            self.sync()
            if self.cuda:
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            fn()
            self.sync()
            if self.cuda:
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated() - base)
        return run


def resident_bytes(model: nn.Module, opt=None) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    if opt is not None:
        tensors += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def train_step(env: Env, model, opt, scaler, images, targets):
    def step():
        with env.autocast():
            losses = model(images, targets)
        loss = losses["final_loss"] if "final_loss" in losses else sum(losses.values())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    return step


class Phases:
    """Wall time of transform / network (backbone + head) / the rest of forward (assignment + losses, or
    decoding) / after forward (backward + optimizer), with a sync at each boundary, through module hooks."""

    def __init__(self, env: Env, model: nn.Module):
        self.env, self.marks = env, []
        self.hooks = [model.register_forward_pre_hook(lambda *a: self.mark("start")),
                      model.transform.register_forward_hook(lambda *a: self.mark("transform")),
                      model.head.register_forward_hook(lambda *a: self.mark("network")),
                      model.register_forward_hook(lambda *a: self.mark("rest_of_forward"))]

    def mark(self, name):
        self.env.sync()
        self.marks.append((name, time.perf_counter()))

    def run(self, fn, repeats: int, train: bool) -> dict[str, float]:
        """Median ms per phase over `repeats` calls of fn (after one warm call)."""
        per_phase: dict[str, list[float]] = {}
        for r in range(repeats + 1):
            self.marks = []
            fn()
            if train:
                self.mark("backward_and_step")
            for (_, t0), (name, t1) in zip(self.marks[:-1], self.marks[1:], strict=True):
                if r:
                    per_phase.setdefault(name, []).append(1000 * (t1 - t0))
        for h in self.hooks:
            h.remove()
        out = {k: round(median(v), 3) for k, v in per_phase.items()}
        out["outside_network_share"] = round(out.get("rest_of_forward", 0) / max(sum(out.values()), 1e-9), 4)
        return out


def time_models(env: Env, fns: dict, n_images: int, rounds: int, warmup: int, resident: dict) -> dict:
    peaks: dict[str, int] = {}
    t = interleave({k: env.measured(f, k, peaks) for k, f in fns.items()}, rounds, warmup)
    out = {}
    for name, times in t.items():
        m = median(times)
        out[name] = {"ms": round(1000 * m, 2), "images_per_s": round(n_images / m, 2),
                     "peak_mib": round((peaks[name] + resident[name]) / 2**20, 1) if env.cuda else None}
    return out


def run_config(env: Env, backbone: str, size: int, args, report: dict) -> None:
    models = build(backbone, size, env.device)
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, fused=env.cuda or None)
            for k, m in models.items()}
    scalers = {k: torch.amp.GradScaler(env.device.type, enabled=env.cuda) for k in models}
    for m in models.values():
        m.train()
    for n in args.train_batches:
        images, targets = batch(n, size, env.device)
        gpu_targets = [{k: v.to(env.device) for k, v in t.items()} for t in targets]
        fns = {k: train_step(env, m, opts[k], scalers[k], images, gpu_targets if k == "torchvision" else targets)
               for k, m in models.items()}
        resident = {k: resident_bytes(m, opts[k]) for k, m in models.items()}
        row = {"backbone": backbone, "size": size, "batch": n,
               "models": time_models(env, fns, n, args.rounds, args.warmup, resident)}
        finish_row(env, args, report, "train", row, models, fns, ("fcos-exp", "torchvision"),
                   n == max(args.train_batches))
    del opts, scalers, fns
    ours, theirs = models["fcos-exp"].eval(), models["torchvision"].eval()
    del models
    for prior in args.priors:
        with torch.no_grad():   # trained-like biases, then the same weights again (training moved them apart)
            ours.head.cls_logits.bias.fill_(math.log(prior / (1 - prior)))
            ours.head.box_reg.bias.fill_(2.0)
            ours.head.scales.fill_(1.0)   # torchvision's head has no per-level scales
        theirs.load_state_dict(torchvision_state_dict(ours))
        infer = {"fcos-exp": ours, "fcos-exp-fused": for_inference(ours), "torchvision": theirs}
        for n in args.infer_batches:
            images, _ = batch(n, size, env.device, seed=2)
            fns = {k: inference(env, m, images) for k, m in infer.items()}
            resident = {k: resident_bytes(m) for k, m in infer.items()}
            row = {"backbone": backbone, "size": size, "batch": n, "prior": prior,
                   "candidates_per_image": candidates(env, ours, images),
                   "models": time_models(env, fns, n, args.rounds, args.warmup, resident),
                   "detections_per_image": {k: round(sum(len(d["scores"]) for d in f()) / n, 1)
                                            for k, f in fns.items()}}
            finish_row(env, args, report, "inference", row, infer, fns, ("fcos-exp-fused", "torchvision"),
                       n == max(args.infer_batches))


def finish_row(env: Env, args, report: dict, kind: str, row: dict, models: dict, fns: dict, phased: tuple,
               with_phases: bool) -> None:
    """Add the time split of `phased` models (largest batch only), the speed-ups, then record and print."""
    if with_phases:
        row["phases"] = {k: Phases(env, models[k]).run(fns[k], args.phase_repeats, train=kind == "train")
                         for k in phased}
    ms = {k: v["ms"] for k, v in row["models"].items()}
    row["speedup_vs_torchvision"] = {k: round(ms["torchvision"] / ms[k], 3) for k in ms if k != "torchvision"}
    report[kind].append(row)
    print_row(kind, row)


def inference(env: Env, model, images):
    def call():
        with torch.inference_mode(), env.autocast():
            return model(images)
    return call


@torch.inference_mode()
def candidates(env: Env, model: FCOS, images) -> float:
    """(point, class) pairs per image scoring above the threshold, before the per-level top-k and NMS."""
    with env.autocast():
        cls, _, ctr = model.head(model.backbone(model.transform(images)[0]))
    scores = torch.sqrt(torch.sigmoid(cls.float()) * torch.sigmoid(ctr.float())[..., None])
    return round(float((scores > model.config.score_thresh).sum()) / len(images), 1)


def print_row(kind: str, row: dict) -> None:
    extra = f", prior {row['prior']}: {row['candidates_per_image']} candidates per image" if "prior" in row else ""
    print(f"{kind} {row['backbone']} {row['size']}px batch {row['batch']}{extra}:", flush=True)
    for name, m in row["models"].items():
        mem = f"{m['peak_mib']:8.0f} MiB" if m["peak_mib"] is not None else ""
        ratio = row["speedup_vs_torchvision"].get(name)
        print(f"  {name:15s} {m['ms']:9.2f} ms {m['images_per_s']:8.1f} img/s {mem}"
              + (f"  {ratio:.2f}x torchvision" if ratio else ""), flush=True)
    for name, ph in row.get("phases", {}).items():
        print(f"  phases {name}: " + ", ".join(f"{k} {v}" for k, v in ph.items()), flush=True)
    if "detections_per_image" in row:
        print(f"  detections per image: {row['detections_per_image']}", flush=True)


def data_loading(env: Env, args, report: dict) -> None:
    """A real training epoch (fit, fp16, R18) on generated shapes images: the loader's share of it."""
    from fcos.data import VOCDataset, build_loader, generate_shapes
    from fcos.engine import TrainConfig, fit

    tmp = tempfile.mkdtemp()
    size, n_batch = args.data_size, args.data_batch
    start = time.perf_counter()
    root = generate_shapes(tmp, seed=0, num_trainval=args.data_images, num_test=1, image_size=size)
    out = {"image_size": size, "images": args.data_images, "batch": n_batch,
           "generate_seconds": round(time.perf_counter() - start, 2), "runs": []}
    ds = VOCDataset(root, "trainval", train=True)
    for workers in args.data_workers:
        loader = build_loader(ds, n_batch, shuffle=True, num_workers=workers)
        t = time.perf_counter()
        n = sum(len(images) for images, _ in loader)
        load_only = n / (time.perf_counter() - t)
        torch.manual_seed(0)
        model = FCOS(num_classes=len(ds.classes), backbone="resnet18", min_size=size, max_size=size * 5 // 3)
        cfg = TrainConfig(epochs=2, lr=0.01, amp="fp16" if env.cuda else "none")
        result = fit(model, loader, cfg, checkpoint_path=f"{tmp}/ck{workers}.pt", classes=ds.classes, device=env.device)
        epoch = result["history"][-1]   # the second epoch: warm
        run = {"num_workers": workers, "loader_only_images_per_s": round(load_only, 1),
               "epoch_seconds": round(epoch["seconds"], 3), "epoch_images_per_s": round(epoch["images_per_second"], 1),
               "data_share_of_epoch": round(epoch["data_seconds"] / epoch["seconds"], 4)}
        out["runs"].append(run)
        print(f"data loading, {workers} workers: loader alone {run['loader_only_images_per_s']} img/s; training "
              f"epoch {run['epoch_images_per_s']} img/s, waiting for data {run['data_share_of_epoch']:.1%} of it",
              flush=True)
    report["data_loading"] = out


def goals(report: dict) -> dict:
    train = [r["speedup_vs_torchvision"]["fcos-exp"] for r in report["train"]]
    infer = [r["speedup_vs_torchvision"]["fcos-exp-fused"] for r in report["inference"] if r["batch"] == 8]
    return {"train_step_min_speedup": min(train, default=None),
            "train_goal_1.3x_met": bool(train) and min(train) >= 1.3,
            "inference_b8_min_speedup": min(infer, default=None),
            "inference_goal_1.5x_met": bool(infer) and min(infer) >= 1.5}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--budget", type=float, default=600, help="seconds; the jobs left then are skipped")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--priors", type=float, nargs="+", default=[0.002, 0.0005],
                    help="classification priors for inference: many candidates, few (see above)")
    ap.add_argument("--quick", action="store_true", help="a tiny dry run (CPU or GPU)")
    args = ap.parse_args()
    args.backbones, args.sizes = ("resnet18", "resnet50"), (512, 800)
    args.train_batches, args.infer_batches, args.phase_repeats = (8, 16), (1, 8), 3
    args.data_size, args.data_images, args.data_batch, args.data_workers = 512, 96, 8, (0, 4)
    if args.quick:
        args.backbones, args.sizes, args.train_batches, args.infer_batches = ("resnet18",), (96,), (2,), (1, 2)
        args.rounds, args.warmup, args.phase_repeats = 1, 1, 1
        args.data_size, args.data_images, args.data_batch, args.data_workers = 96, 8, 4, (0,)
    start = time.perf_counter()
    env = Env(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    report = {"device": torch.cuda.get_device_name() if env.cuda else "cpu", "torch": torch.__version__,
              "torchvision": torchvision.__version__, "amp": "fp16" if env.cuda else "none",
              "rounds": args.rounds, "warmup": args.warmup, "priors": args.priors, "quick": args.quick,
              "train": [], "inference": [], "skipped": [], "errors": []}
    print(f"{report['device']}, torch {report['torch']}, torchvision {report['torchvision']}, amp {report['amp']}; "
          f"medians of {args.rounds} interleaved rounds after {args.warmup} warm-up rounds", flush=True)
    jobs = [(f"{b} {s}px", lambda b=b, s=s: run_config(env, b, s, args, report))
            for b in args.backbones for s in args.sizes]
    jobs.append(("data loading", lambda: data_loading(env, args, report)))

    def save():   # after every job: a run stopped from outside keeps what it measured
        report["goals"] = goals(report)
        report["seconds"] = round(time.perf_counter() - start, 1)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)

    for name, job in jobs:
        if time.perf_counter() - start > args.budget:
            report["skipped"].append(name)
            print(f"{name}: skipped (budget of {args.budget:.0f} s spent)", flush=True)
            continue
        try:
            job()
        except Exception as e:   # out of memory, a library difference: note it and go on
            report["errors"].append({"job": name, "error": f"{type(e).__name__}: {e}"[:2000]})
            traceback.print_exc()
        finally:
            if env.cuda:
                torch.cuda.empty_cache()
        save()
    save()
    print(f"goals: {report['goals']}; {report['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
