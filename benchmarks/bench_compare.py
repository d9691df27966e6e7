"""How long `fcos-exp compare` and `fcos-exp report` take over many tracked runs: N runs (configurations x
seeds) with kept test detections in a temporary sqlite MLflow store, on a synthetic test split of the default
job's size (120 images, 6 classes, up to 100 detections an image as the default decoding keeps). Each command
runs as a user runs it (a new process: imports, MLflow store, downloads, matching, resampling).

    python benchmarks/bench_compare.py [--runs 50] [--seeds 5] [--images 120] [--resamples 1000] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")


def populate(project: Path, uri: str, runs: int, seeds: int, images: int) -> list[str]:
    """The store: runs // seeds configurations (lr) x seeds, each a run as evaluate leaves it. Returns the
    run names, configuration by configuration."""
    import mlflow
    import yaml
    from bootstrap_data import log_run, synthetic

    from pipeline.params import flatten

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tracking"]["experiment"] = "bench"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    gt, _ = synthetic(images, CLASSES, seed=0)
    (project / "data/prepared").mkdir(parents=True)
    (project / "data/prepared/test.json").write_text(json.dumps(gt))
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("bench", artifact_location=(project / "mlartifacts").as_uri())
    names = []
    for n in range(runs):
        config, seed = divmod(n, seeds)
        values = {**flatten(params), "train.lr": 0.001 * (config + 1), "train.seed": seed}
        det = synthetic(images, CLASSES, seed=0, quality=0.5 + 0.4 * config / max(1, runs // seeds),
                        per_image=100, det_seed=1000 + n)[1]
        names.append(f"lr{config}-s{seed}")
        log_run(client, exp, names[-1], values, gt, det, project / "dets")
    return names


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=1, help="times each command is run (the fastest is shown)")
    args = ap.parse_args()
    from common import cpu_label

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        uri = f"sqlite:///{project / 'mlflow.db'}"
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": path}
        os.environ["MLFLOW_TRACKING_URI"] = uri
        start = time.perf_counter()
        names = populate(project, uri, args.runs, args.seeds, args.images)
        print(f"{cpu_label()} {args.runs} runs ({args.runs // args.seeds} configurations x {args.seeds} seeds), "
              f"{args.images} test images, {args.resamples} resamples; store filled in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        cli = [sys.executable, "-m", "pipeline"]
        commands = {
            "compare A B (2 runs)": [*cli, "compare", names[0], names[-1], "--resamples", str(args.resamples)],
            f"compare --seeds A B ({2 * args.seeds} runs)": [*cli, "compare", names[0], names[-1], "--seeds",
                                                             "--resamples", str(args.resamples)],
            f"report ({args.runs} runs)": [*cli, "report", "--resamples", str(args.resamples), "--out", "reports"],
            "fcos-exp --help (start-up)": [*cli, "--help"],
        }
        for name, cmd in commands.items():
            seconds = min(timed(cmd, project, env) for _ in range(args.rounds))
            print(f"{name:32s} {seconds:7.1f} s", flush=True)


if __name__ == "__main__":
    main()
