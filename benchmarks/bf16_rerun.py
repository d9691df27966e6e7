"""Are reruns bit-identical under `train.amp`? Trains the default job's model (params.yaml: model and train
sections, data generated as the shapes format does) for a few steps in two separate processes on this machine,
then compares the sha256 of every parameter and buffer of the two results (and with --against none, of a
float32 run, which must differ). One process each, so no state (allocator, oneDNN caches, Winograd decisions
made in the first) is shared but the decisions file, as between two `dvc repro`.

    python benchmarks/bf16_rerun.py [--amp bf16] [--steps 20] [--params params.yaml]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_label

from fcos import FCOS
from fcos.data import VOCDataset, build_loader, generate_shapes
from fcos.engine import _cpu_has_bf16, fit, resolve_amp, seed_everything
from pipeline.params import load_params


def train(params_path: str, amp: str, steps: int, out: Path) -> None:
    """The child: `steps` steps of the default job's model and loop under `amp`; writes each tensor's sha256."""
    params = load_params(params_path)
    shapes, batch = params.data.shapes, params.train.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_shapes(tmp, seed=shapes.seed, num_trainval=steps * batch, num_test=1,
                               image_size=shapes.image_size, min_radius=shapes.min_radius, colours=shapes.colours)
        ds = VOCDataset(root, "trainval", train=True)
        cfg = params.train_config()
        cfg.amp, cfg.epochs, cfg.eval_every = amp, 1, 0
        seed_everything(cfg.seed)
        model = FCOS(params.model_config(len(ds.classes)))
        start = time.perf_counter()
        fit(model, build_loader(ds, batch, shuffle=True, seed=cfg.seed), cfg, checkpoint_path=Path(tmp) / "ck.pt",
            classes=ds.classes, device="cpu")
        seconds = time.perf_counter() - start
    digests = {k: hashlib.sha256(v.detach().contiguous().cpu().numpy().tobytes()).hexdigest()
               for k, v in model.state_dict().items()}
    out.write_text(json.dumps({"digests": digests, "seconds": seconds}))


def run_child(args, amp: str, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(out), "--amp", amp, "--steps", str(args.steps),
           "--params", args.params]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--amp", default="bf16", choices=("none", "bf16", "auto"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--against", choices=("none",), help="also train in float32 once: it must differ")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return train(args.params, args.amp, args.steps, args.child)
    resolved = resolve_amp(args.amp, torch.device("cpu"))
    print(f"{cpu_label()} amp {args.amp} (runs as {resolved}; native bf16: {_cpu_has_bf16()}), {args.steps} steps "
          f"of the default job's model, two processes")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_child(args, args.amp, Path(tmp) / f"run{i}.json") for i in range(2)]
        other = run_child(args, "none", Path(tmp) / "none.json") if args.against else None
    a, b = (r["digests"] for r in runs)
    differ = [k for k in a if a[k] != b[k]]
    print(f"  run 1 {runs[0]['seconds']:.1f} s, run 2 {runs[1]['seconds']:.1f} s")
    print(f"  {len(a) - len(differ)} of {len(a)} tensors bit-identical" + (f"; differ: {differ[:5]}" if differ else ""))
    if other:
        same = sum(other["digests"][k] == a[k] for k in a)
        print(f"  float32 run {other['seconds']:.1f} s: {same} of {len(a)} tensors equal to the {args.amp} run's "
              "(only never-updated ones should be)")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
