"""`fcos-exp seeds N`: the configuration in params.yaml (committed or not) trained and evaluated with N seeds,
as DVC experiments `dvc exp run --temp -S train.seed=k` one after another (each in a temporary copy, so the
workspace is left as it is), or only queued with --queue. Each is an MLflow run; the runs that differ only in
train.seed are one row of the report and one side of `fcos-exp compare --seeds`. A seed whose stages DVC has
already run with these params is restored from its run cache and logs no new run: the earlier run counts."""
from __future__ import annotations

import io
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .compare import SEED_PARAM
from .errors import UserError


def seed_commands(n: int, first: int = 0, queue: bool = False, name: str | None = None,
                  values: list[str] = ()) -> list[list[str]]:
    """One `dvc exp run` per seed; `values`: KEY=VALUE overrides for every one of them."""
    for v in values:
        if "=" not in v or v.startswith("="):
            raise UserError(f"--set must look like key=value, got {v!r}")
        if v.split("=", 1)[0].split(":")[-1] == SEED_PARAM:
            raise UserError(f"--set {v}: the seeds are N and --first")
    sets = [a for v in values for a in ("-S", v)]
    return [["dvc", "exp", "run", "--queue" if queue else "--temp", *sets, "-S", f"{SEED_PARAM}={k}",
             *(["-n", f"{name}-seed{k}"] if name else [])] for k in range(first, first + n)]


def _stderr():
    """Where DVC's output goes: our stderr (stdout holds data only) where it is a real file, else inherited."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, io.UnsupportedOperation):
        return None


def run_seeds(n: int, first: int, queue: bool, name: str | None, console, values: list[str] = ()) -> None:
    if shutil.which("dvc") is None:
        raise UserError("dvc: not found on PATH; `pip install -e .` installs it")
    if not Path("dvc.yaml").is_file():
        raise UserError("dvc.yaml: not found; run `fcos-exp seeds` in the project folder")
    out = _stderr()
    commands = seed_commands(n, first, queue, name, values)
    for done, cmd in enumerate(commands):
        console.print(f"$ {shlex.join(cmd)}")
        sys.stderr.flush()
        r = subprocess.run(cmd, stdout=out)
        if r.returncode != 0:
            raise UserError(f"`{shlex.join(cmd)}` failed (exit {r.returncode}); {done} of {n} seeds "
                            f"{'queued' if queue else 'done'} before it")
    seeds = f"{SEED_PARAM} {first}..{first + n - 1}"
    if queue:
        console.print(f"queued {n} experiments ({seeds}): `dvc exp run --run-all` (or `dvc queue start`) runs them")
    else:
        console.print(f"ran {n} experiments ({seeds}): the report shows them as one row; "
                      "`fcos-exp compare --seeds A B` compares two such groups (A, B: any run of each)")
