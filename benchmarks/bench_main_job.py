"""The main job (`dvc repro` of the default params.yaml) of several commits, timed from fresh clones, interleaved
(A B A B ...: the machine's speed drifts): wall seconds per stage and in all, and the test metrics it ends
with. Each commit runs from its own clone through PYTHONPATH, in this environment (no install), with its own
MLflow store; `--set key=value` changes params.yaml of every clone (e.g. train.amp=bf16), and each
`--grid key=v1,v2,...` makes a clone per value (of every commit; several grids: every combination), e.g.
float32 against bfloat16 over three seeds: --grid train.amp=none,bf16 --grid train.seed=0,1,2; values that
hold commas as a YAML list: --grid 'model.min_size=[128, [96, 128]]'.

    python benchmarks/bench_main_job.py HEAD~3 HEAD [--rounds 2] [--set train.amp=bf16]
                                        [--grid train.seed=0,1,2] [--json out.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from common import cpu_label

ROOT = Path(__file__).resolve().parents[1]


def clone(commit: str, where: Path, settings: list[str]) -> Path:
    """A clone of `commit` under `where`, named by the commit and `settings`, which it applies."""
    sha = subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    dst = where / "_".join([sha, *settings]).replace(" ", "")
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dst)], check=True)
    subprocess.run(["git", "checkout", "-q", sha], cwd=dst, check=True)
    if settings:
        import yaml
        params = yaml.safe_load((dst / "params.yaml").read_text())
        for setting in settings:
            key, value = setting.split("=", 1)
            section, name = key.split(".", 1)
            params[section][name] = yaml.safe_load(value)
        (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dst


def grid_values(values: str) -> list[str]:
    """'v1,v2,...', or a YAML list (its items may hold commas: '[128, [96, 128]]'), as settings' values."""
    if not values.startswith("["):
        return values.split(",")
    import yaml
    return [v if isinstance(v, str) else json.dumps(v) for v in yaml.safe_load(values)]   # JSON is YAML


def repro(project: Path) -> dict:
    """`dvc repro --force` in `project`: wall seconds in all and per stage, and metrics/eval.json's numbers."""
    env = {**os.environ, "PYTHONPATH": str(project), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    start = time.perf_counter()
    p = subprocess.Popen(["dvc", "repro", "--force"], cwd=project, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    stages, current, t0 = {}, None, start
    for line in p.stdout:
        m = re.match(r"Running stage '(\w+)'", line)
        if m:
            now = time.perf_counter()
            if current:
                stages[current] = round(now - t0, 1)
            current, t0 = m.group(1), now
    p.wait()
    total = time.perf_counter() - start
    if current:
        stages[current] = round(time.perf_counter() - t0, 1)
    if p.returncode:
        raise SystemExit(f"{project}: dvc repro failed (exit {p.returncode})")
    ev = json.loads((project / "metrics/eval.json").read_text())
    return {"seconds": round(total, 1), "stages": stages, "AP": ev["AP"], "AP50": ev["AP50"], "AP75": ev["AP75"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("commits", nargs="+")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="key=value set in every clone's params.yaml")
    ap.add_argument("--grid", action="append", default=[], help="key=v1,v2,...: a clone per value")
    ap.add_argument("--json")
    args = ap.parse_args()
    print(f"main job (dvc repro --force) on {cpu_label()}; settings: {args.set or 'as committed'}; "
          f"grid: {args.grid or 'none'}")
    grids = [[f"{key}={v}" for v in grid_values(values)] for key, values in (g.split("=", 1) for g in args.grid)]
    with tempfile.TemporaryDirectory(prefix="main-job-") as tmp:
        projects = [clone(c, Path(tmp), [*args.set, *combo]) for c in args.commits
                    for combo in itertools.product(*grids)]
        results = {p.name: [] for p in projects}
        for r in range(args.rounds):
            for project in projects if r % 2 == 0 else projects[::-1]:
                res = repro(project)
                results[project.name].append(res)
                print(f"round {r + 1} {project.name}: {res['seconds']:.0f} s {res['stages']}  AP {res['AP']:.3f} "
                      f"AP50 {res['AP50']:.3f}", flush=True)
    for name, runs in results.items():
        secs = sorted(x["seconds"] for x in runs)
        print(f"{name}: median {secs[len(secs) // 2]:.0f} s over {len(runs)} runs; AP {[x['AP'] for x in runs]} "
              f"AP50 {[x['AP50'] for x in runs]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_label(), "settings": args.set, "grid": args.grid,
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
