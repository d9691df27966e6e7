"""Is B really better than A? Paired bootstrap comparisons of tracked runs from the test detections each
evaluation keeps (pipeline/detections.py; the statistics in fcos/bootstrap.py), for `fcos-exp compare A B`
and the report.

A side is one run, or a group of seed repeats: the runs whose logged params differ only in train.seed.
A group's value is the mean over its seeds and its interval pools them (fcos.bootstrap.pool: test images
and seeds resampled). Every number is computed from the detections on the local test split, which must be
the one the runs were scored on (its sha256, the MLflow tag GT_TAG)."""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fcos.bootstrap import LEVEL, RESAMPLES, SEED, Replicates, bootstrap, gt_hash, match_table, paired, pool

from .detections import ARTIFACT, GT_TAG, read_detections
from .errors import UserError
from .paths import PREPARED

SEED_PARAM = "train.seed"
TEST_GT = PREPARED / "test.json"
METHOD = ("paired percentile bootstrap over test images (the same resampled images for A and B); a group of "
          "seed repeats: the mean over its seeds, seeds resampled too")


def seed_key(row) -> tuple:
    """What seed repeats share: every logged param but train.seed (a run without params is alone)."""
    if not row.params:
        return ("run", row.run_id)
    return tuple(sorted((k, v) for k, v in row.params.items() if k != SEED_PARAM))


def seed_groups(rows: list) -> list[list]:
    """The rows grouped by seed_key, groups and members in the order given; of the runs of one seed only the
    newest counts (a configuration run again with the same seed measures nothing new)."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        seeds = groups.setdefault(seed_key(r), {})
        seed = r.params.get(SEED_PARAM)
        if seed not in seeds or r.start > seeds[seed].start:
            seeds[seed] = r
    kept = {id(r) for g in groups.values() for r in g.values()}
    order: dict[tuple, list] = {}
    for r in rows:
        if id(r) in kept:
            order.setdefault(seed_key(r), []).append(r)
    return list(order.values())


def first(rows: list):
    """The run that names a group: its oldest."""
    return min(rows, key=lambda r: r.start)


def label(rows: list) -> str:
    """A run's name and id; a group by its first run."""
    r = first(rows)
    return f"{r.name} ({r.run_id[:8]})" if len(rows) == 1 else f"{r.name} + {len(rows) - 1} seed repeats"


def resolve(rows: list, ref: str, experiment: str):
    """The run named by `ref`: a run id, an id prefix, a run name or a `dvc exp` name (tag dvc_exp)."""
    for match in (lambda r: r.run_id == ref, lambda r: r.run_id.startswith(ref), lambda r: r.name == ref,
                  lambda r: r.tags.get("dvc_exp") == ref):
        found = [r for r in rows if match(r)]
        if len(found) == 1:
            return found[0]
        if found:
            ids = ", ".join(r.run_id[:8] for r in found[:5])
            raise UserError(f"{ref!r}: {len(found)} runs of experiment {experiment!r} match ({ids}); give the run id")
    raise UserError(f"{ref!r}: no run of experiment {experiment!r} has this id, name or dvc exp name")


def no_detections(row) -> str | None:
    """Why a run cannot be compared on its detections, or None."""
    if GT_TAG not in row.tags:
        return (f"run {row.name} ({row.run_id[:8]}) kept no test detections (not evaluated, or evaluated before "
                "fcos-exp kept them)")
    return None


@dataclass
class TestSplit:
    """The local test ground truth (data/prepared/test.json): its sha256 and a pycocotools COCO of it."""

    path: Path
    sha: str
    coco: object


def load_split(path: Path = TEST_GT) -> TestSplit | None:
    if not path.is_file():
        return None
    from fcos.coco_eval import load_gt
    gt = json.loads(path.read_text())
    return TestSplit(path, gt_hash(gt), load_gt(gt, "pycocotools"))


def check_split(split: TestSplit | None, sha: str, commit: str) -> None:
    """UserError unless the local test split is the one with hash `sha` (the runs were scored on it)."""
    fix = f"`git checkout {commit[:12]} && dvc checkout {PREPARED}`, or `fcos-exp prepare` with the runs' data params"
    if split is None:
        raise UserError(f"{TEST_GT}: not found; the runs were scored on test data {sha[:12]}: {fix}")
    if split.sha != sha:
        raise UserError(f"{split.path}: test data {split.sha[:12]}, but the runs were scored on {sha[:12]}; "
                        f"the data they used: {fix}")


class Replicator:
    """Each run's bootstrap replicates (downloaded detections -> match table -> resampled metrics), once per
    run; groups pooled with a seed drawn from their run ids (the same group always pools the same way)."""

    def __init__(self, client, split: TestSplit, resamples: int = RESAMPLES, seed: int = SEED):
        self.client, self.split, self.resamples, self.seed = client, split, resamples, seed
        self.done: dict[str, Replicates] = {}

    def run(self, row) -> Replicates:
        if row.run_id not in self.done:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    path = self.client.download_artifacts(row.run_id, ARTIFACT, tmp)
                except Exception as e:
                    raise UserError(f"run {row.name} ({row.run_id[:8]}): its test detections ({ARTIFACT}) could not "
                                    f"be read ({type(e).__name__})") from None
                det = read_detections(Path(path))
            self.done[row.run_id] = bootstrap(match_table(self.split.coco, det), self.resamples, self.seed)
        return self.done[row.run_id]

    def side(self, rows: list) -> Replicates:
        rows = sorted(rows, key=lambda r: r.run_id)   # the same group pools the same way, in whatever order
        if len(rows) == 1:
            return self.run(rows[0])
        ids = hashlib.sha256(",".join(r.run_id for r in rows).encode()).hexdigest()
        return pool([self.run(r) for r in rows], [self.seed, int(ids[:8], 16)])


def spread(r: Replicates, key: str) -> float | None:
    """The standard deviation over seeds (None from one seed)."""
    values = [m[key] for m in r.members if m.get(key) is not None]
    return statistics.stdev(values) if len(values) >= 2 else None


def metric_keys(r: Replicates) -> list[str]:
    return ["AP", "AP50", *(k for k in r.full if k.startswith("AP50/"))]


def comparison(a: Replicates, b: Replicates, level: float = LEVEL) -> list[dict]:
    """Per metric (AP, AP50, AP50/<class>): A and B (mean over seeds, std over seeds), B - A, its interval,
    standard error and verdict; None where undefined (a class without test objects, under 2 images, 1 seed)."""
    diffs = paired(a, b, level)
    return [{"metric": k, "a": a.full[k], "a_std": spread(a, k), "a_n": len(a.members), "b": b.full[k],
             "b_std": spread(b, k), "b_n": len(b.members), "diff": d.diff, "lo": d.lo, "hi": d.hi, "se": d.se,
             "verdict": d.verdict} for k in metric_keys(a) if (d := diffs.get(k)) is not None]


def common_split(sides: dict[str, list]) -> str:
    """The test-data hash all runs of all sides share; UserError (one line, naming the hashes) otherwise."""
    for rows in sides.values():
        for r in rows:
            reason = no_detections(r)
            if reason:
                raise UserError(f"{reason}; `fcos-exp evaluate` in its workspace keeps them")
    first = {name: rows[0].tags[GT_TAG] for name, rows in sides.items()}
    for name, rows in sides.items():
        odd = [r for r in rows if r.tags[GT_TAG] != first[name]]
        if odd:
            raise UserError(f"{name}: seed repeat {odd[0].name} ({odd[0].run_id[:8]}) was scored on test data "
                            f"{odd[0].tags[GT_TAG][:12]}, {rows[0].name} on {first[name][:12]}")
    (a, ha), (b, hb) = first.items()
    if ha != hb:
        raise UserError(f"A ({label(sides[a])}) was scored on test data {ha[:12]}, B ({label(sides[b])}) on "
                        f"{hb[:12]}: runs on different test splits are not compared")
    return ha


def fmt(v, digits: int = 3, sign: bool = False) -> str:
    return "n/a" if v is None else f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def value_text(v, std, n) -> str:
    if n == 1 or v is None:
        return fmt(v)
    return f"{fmt(v)} ± {fmt(std)} (n={n})"


def interval_text(lo, hi) -> str:
    return "n/a" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"


def run(params: dict, console, a: str, b: str, seeds: bool = False, resamples: int | None = None,
        seed: int | None = None, as_json: bool = False, experiment: str | None = None) -> dict:
    """`fcos-exp compare A B`: the table on stdout (or JSON), what was compared on stderr."""
    from rich.console import Console
    from rich.table import Table

    from .report.build import fetch_rows, search_all
    from .tracking import reader

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # stderr: our lines only
    resamples = RESAMPLES if resamples is None else resamples
    seed = SEED if seed is None else seed
    name = experiment or params["tracking"]["experiment"]
    client = reader()
    exp = client.get_experiment_by_name(name)
    rows = fetch_rows(search_all(client, exp.experiment_id), None, None, None) if exp else []
    picked = {"A": resolve(rows, a, name), "B": resolve(rows, b, name)}
    groups = {seed_key(g[0]): g for g in seed_groups(rows)}
    sides = {k: [m for m in groups[seed_key(r)] if not no_detections(m)] or [r] if seeds else [r]
             for k, r in picked.items()}
    sha = common_split(sides)
    split = load_split()
    check_split(split, sha, picked["A"].tags.get("git_commit", "HEAD"))
    rep = Replicator(client, split, resamples, seed)
    reps = {k: rep.side(v) for k, v in sides.items()}
    rows_out = comparison(reps["A"], reps["B"])
    result = {"A": _side_json(sides["A"]), "B": _side_json(sides["B"]), "test_gt_sha256": sha,
              "images": reps["A"].n_images, "resamples": resamples, "seed": seed, "level": LEVEL, "method": METHOD,
              "metrics": rows_out}
    console.print(f"A: {label(sides['A'])}; B: {label(sides['B'])}; {result['images']} test images of test data "
                  f"{sha[:12]}")
    for k in ("A", "B"):
        extra = len(groups[seed_key(picked[k])]) - 1
        if not seeds and extra:
            console.print(f"{k} has {extra} seed repeats: --seeds compares the groups")
    if as_json:
        print(json.dumps(result, indent=2))
        return result
    table = Table(title=f"B - A, {LEVEL:.0%} interval ({resamples} resamples, seed {seed})")
    for col in ("metric", "A", "B", "B - A", f"{LEVEL:.0%} CI", "verdict"):
        table.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
    for m in rows_out:
        table.add_row(m["metric"], value_text(m["a"], m["a_std"], m["a_n"]), value_text(m["b"], m["b_std"], m["b_n"]),
                      fmt(m["diff"], sign=True), interval_text(m["lo"], m["hi"]), m["verdict"] or "n/a")
    Console().print(table)
    console.print(f"{METHOD}; within noise: the interval holds 0; n/a: no test object of the class")
    return result


def _side_json(rows: list) -> dict:
    return {"runs": [{"run_id": r.run_id, "name": r.name, "seed": r.params.get(SEED_PARAM)} for r in rows]}
