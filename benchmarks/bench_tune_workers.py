"""Trials per hour of `fcos-exp tune` on this machine: 1 worker with all the cores' threads against N workers
(`--workers N`) sharing them, e.g. 1 x 2 threads against 2 x 1 thread on 2 cores.

    python benchmarks/bench_tune_workers.py [--workers 2] [--trials 4] [--rounds 2] [--images 400]

Every trial costs the same (the space is the learning rate only, a fixed number of epochs, no pruning), so
trials per hour compare the two ways of using the cores. Each study runs as the user runs it (a fresh
process: imports and the start included) in a temporary project on the embedded dataset, without MLflow;
the configurations alternate (A B, B A, ...) because the host's speed drifts."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from common import cpu_label, median  # noqa: E402

from pipeline.tuning.workers import cores  # noqa: E402


def project(folder: Path, images: int, epochs: int) -> Path:
    """A project on `images` generated images whose every trial trains `epochs` epochs."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"]["shapes"]["num_trainval"] = images
    p["train"]["epochs"] = epochs
    p["tracking"]["enabled"] = False
    p["tune"].update(space="space.yaml", pruner="none", train_fraction=1.0)
    (folder / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (folder / "space.yaml").write_text("train.lr: {type: float, low: 0.0005, high: 0.008, log: true}\n")
    run(folder, ["prepare"])
    return folder


def run(folder: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=folder, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"fcos-exp {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="workers of configuration B")
    ap.add_argument("--trials", type=int, default=4, help="trials per study (a multiple of --workers)")
    ap.add_argument("--rounds", type=int, default=2, help="studies per configuration")
    ap.add_argument("--images", type=int, default=400, help="generated images (trainval) of the project")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of every trial")
    args = ap.parse_args()
    n = cores()
    configs = {f"1 worker x {n} threads": ["--threads", str(n)],
               f"{args.workers} workers x {max(1, n // args.workers)} threads": ["--workers", str(args.workers)]}
    print(f"{cpu_label()} {n} cores; {args.trials} trials of {args.epochs} epoch(s) on "
          f"{round(args.images * 0.9)} images per study; {args.rounds} round(s)", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        folder = project(Path(tmp), args.images, args.epochs)
        names = list(configs)
        for r in range(args.rounds):
            for name in names[r % 2:] + names[:r % 2]:
                study = f"bench-{len(seconds[name])}-{names.index(name)}"
                s = run(folder, ["tune", "--trials", str(args.trials), "--study-name", study, *configs[name]])
                seconds[name].append(s)
                print(f"  {name}: {s:.0f} s ({args.trials / s * 3600:.0f} trials/hour)", flush=True)
    rates = {name: args.trials / median(s) * 3600 for name, s in seconds.items()}
    for name, rate in rates.items():
        print(f"{name}: {rate:.0f} trials/hour (median of {len(seconds[name])})")
    a, b = rates.values()
    print(f"{names[1]} / {names[0]}: {b / a:.2f}x")


if __name__ == "__main__":
    main()
