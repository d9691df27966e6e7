"""The report's answer to "is B really better than A?": the leaderboard with seed repeats (runs whose params
differ only in train.seed) as one row, mean ± std over the seeds, n and the interval of the sorted metric,
sorted by the mean; and the paired comparison of each row against the baseline's row: B - A of AP, AP50
and each class's AP50 with its paired bootstrap interval (pipeline/compare.py, fcos/bootstrap.py)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from fcos.bootstrap import A_BETTER, B_BETTER, LEVEL, RESAMPLES, SEED, interval

from ..compare import (
    METHOD,
    TEST_GT,
    Replicator,
    comparison,
    first,
    label,
    load_split,
    no_detections,
    seed_groups,
    seed_key,
)
from ..detections import GT_TAG
from ..errors import UserError
from .build import LOWER_IS_BETTER
from .sections import AP_COLUMNS, MISSING, num

BOOTSTRAPPED = ("AP", "AP50")   # the leaderboard's interval column: the sorted metric if one of these, else AP50


@dataclass
class Group:
    """A leaderboard row: one run, or the seed repeats of one configuration (members in the order given)."""

    rows: list

    def values(self, key: str) -> list[float]:
        return [v for r in self.rows if (v := r.value(key)) is not None]

    def value(self, key: str) -> float | None:
        v = self.values(key)
        return statistics.fmean(v) if v else None

    def std(self, key: str) -> float | None:
        v = self.values(key)
        return statistics.stdev(v) if len(v) >= 2 else None

    def best(self, key: str):
        """The member with the best value of `key` (None if no member has it)."""
        have = [r for r in self.rows if r.value(key) is not None]
        sign = 1 if key in LOWER_IS_BETTER else -1
        return min(have, key=lambda r: (sign * r.value(key), r.start)) if have else None

    @property
    def start(self) -> int:
        return min(r.start for r in self.rows)


def group_rows(rows: list, sort_by: str) -> list[Group]:
    """Seed repeats grouped; best mean of `sort_by` first (lowest for times), groups without it last, oldest
    first (for single runs the order of build.sort_rows)."""
    groups = [Group(g) for g in seed_groups(rows)]
    sign = 1 if sort_by in LOWER_IS_BETTER else -1
    have = [g for g in groups if g.value(sort_by) is not None]
    missing = [g for g in groups if g.value(sort_by) is None]
    return sorted(have, key=lambda g: (sign * g.value(sort_by), g.start)) + sorted(missing, key=lambda g: g.start)


def paired_context(client, groups: list[Group], baseline, sort_by: str, resamples: int | None = None,
                   seed: int | None = None) -> dict:
    """Each group's bootstrap replicates (from the members that kept detections on the local test split)
    and the comparison of each group against the baseline's group. Returns {"note": why there are no
    intervals or None, "intervals": {id(group): (lo, hi, k members used)}, "paired": [(group, rows or reason)],
    "baseline": its group, "metric", "resamples", "seed", "images"}."""
    resamples = RESAMPLES if resamples is None else resamples
    seed = SEED if seed is None else seed
    metric = sort_by if sort_by in BOOTSTRAPPED else "AP50"
    base = next((g for g in groups if baseline is not None and seed_key(g.rows[0]) == seed_key(baseline)), None)
    out = {"note": None, "intervals": {}, "paired": [], "baseline": base, "metric": metric, "resamples": resamples,
           "seed": seed, "images": None}
    split = load_split()
    hashes = {r.tags[GT_TAG] for g in groups for r in g.rows if GT_TAG in r.tags}
    if not hashes:
        out["note"] = "No run kept its test detections (`fcos-exp evaluate` keeps them), so there are no intervals."
        return out
    if split is None or split.sha not in hashes:
        seen = ", ".join(sorted(h[:12] for h in hashes))
        out["note"] = (f"No intervals: they need the test split the runs were scored on (test data {seen}), and "
                       + (f"{TEST_GT} is missing." if split is None else f"{TEST_GT} holds {split.sha[:12]}."))
        return out
    rep = Replicator(client, split, resamples, seed)
    usable = {id(g): [r for r in g.rows if r.tags.get(GT_TAG) == split.sha] for g in groups}
    reps, failed = {}, {}
    for g in groups:
        try:
            if usable[id(g)]:
                reps[id(g)] = rep.side(usable[id(g)])
        except UserError as e:   # an artifact that cannot be read: that row gets no interval, the report goes on
            failed[id(g)] = str(e)
    for g in groups:
        r = reps.get(id(g))
        if r is not None:
            lo, hi, _ = interval(None if r.values is None else r.values[metric])
            out["intervals"][id(g)] = (lo, hi, len(usable[id(g)]))
            out["images"] = r.n_images
    if base is None:
        return out
    if id(base) not in reps:
        out["note"] = (f"The baseline {label(base.rows)}: " + failed.get(id(base), _why(base.rows, split.sha))
                       + "; choose another with --baseline.")
        return out
    for g in groups:
        if g is not base:
            out["paired"].append((g, comparison(reps[id(base)], reps[id(g)]) if id(g) in reps
                                  else failed.get(id(g), _why(g.rows, split.sha))))
    return out


def _why(rows: list, sha: str) -> str:
    reason = no_detections(rows[0])
    if reason:
        return "kept no test detections"
    return f"was scored on other test data ({rows[0].tags[GT_TAG][:12]}, here {sha[:12]})"


def _name(g: Group) -> str:
    return g.rows[0].name if len(g.rows) == 1 else label(g.rows)


def _cell(group: Group, key: str, digits: int = 3) -> str:
    v, s = group.value(key), group.std(key)
    return num(v, digits) if s is None else f"{num(v, digits)} ± {num(s, digits)}"


def _status(group: Group) -> str:
    states = [r.status for r in group.rows]
    if len(states) == 1:
        return states[0] if states[0] in ("FINISHED", "RUNNING") else f"✗ {states[0]}"
    ok = sum(s == "FINISHED" for s in states)
    return "FINISHED" if ok == len(states) else f"{ok} of {len(states)} FINISHED"


def leaderboard(ctx: dict) -> dict:
    """One row per group: params of its first member, mean ± std over seeds, n, the interval of the metric."""
    intervals = ctx["paired"]["intervals"]
    metric = ctx["paired"]["metric"]
    head = ["run", "id", "backbone", "lr", "epochs", *AP_COLUMNS, "train s", "ms/img", "seeds",
            f"{metric} {LEVEL:.0%} CI", "status"]
    rows, classes = [], []
    for g in ctx["groups"]:
        one = first(g.rows)
        lo, hi, used = intervals.get(id(g), (None, None, 0))
        ci = MISSING if lo is None else f"[{lo:.3f}, {hi:.3f}]" + (f" ({used} of {len(g.rows)})"
                                                                   if used < len(g.rows) else "")
        rows.append([_name(g), ", ".join(r.run_id[:8] for r in g.rows),
                     one.params.get("model.backbone", MISSING), one.params.get("train.lr", MISSING),
                     one.params.get("train.epochs", MISSING), *(_cell(g, c) for c in AP_COLUMNS),
                     _cell(g, "train_seconds", 1), _cell(g, "ms_per_image", 1), str(len(g.rows)), ci, _status(g)])
        failed = len(g.rows) == 1 and one.status in ("FAILED", "KILLED")
        classes.append("best" if ctx["best"] in g.rows else "failed" if failed else "")
    return {"kind": "table", "id": "leaderboard", "head": head, "rows": rows, "classes": classes}


def _diff_text(m: dict) -> str:
    if m["diff"] is None:
        return "n/a"
    mark = {B_BETTER: " ▲", A_BETTER: " ▼"}.get(m["verdict"], "")
    ci = "" if m["lo"] is None else f" [{m['lo']:+.3f}, {m['hi']:+.3f}]"
    return f"{m['diff']:+.3f}{ci}{mark}"


def paired_blocks(ctx: dict) -> list[dict]:
    p = ctx["paired"]
    blocks = [{"kind": "h2", "text": "Paired comparison against the baseline"}]
    if p["note"]:
        return blocks + [{"kind": "p", "text": p["note"]}]
    base = p["baseline"]
    blocks.append({"kind": "p", "text": (
        f"Each row B against the baseline A = {label(base.rows)}: B - A on the {p['images']} test images both were "
        f"scored on, with its {LEVEL:.0%} interval ({METHOD}; {p['resamples']} resamples, seed {p['seed']}). "
        f"Within noise: the interval holds 0; ▲ B better, ▼ A better (the interval above or below 0). "
        f"`fcos-exp compare A B` gives the same numbers for two runs (--seeds for groups).")})
    if not p["paired"]:
        return blocks + [{"kind": "p", "text": "No other run to compare."}]
    head = ["run", "id", "seeds", f"ΔAP [{LEVEL:.0%} CI]", "verdict AP", f"ΔAP50 [{LEVEL:.0%} CI]", "verdict AP50"]
    rows, per_class = [], []
    for g, result in p["paired"]:
        ident = [_name(g), first(g.rows).run_id[:8], str(len(g.rows))]
        if isinstance(result, str):
            rows.append([*ident, MISSING, result, MISSING, MISSING])
            continue
        by = {m["metric"]: m for m in result}
        rows.append([*ident, _diff_text(by["AP"]), by["AP"]["verdict"] or MISSING,
                     _diff_text(by["AP50"]), by["AP50"]["verdict"] or MISSING])
        per_class.append((ident, [m for m in result if m["metric"].startswith("AP50/")]))
    blocks.append({"kind": "table", "id": "paired", "head": head, "rows": rows, "classes": [""] * len(rows)})
    if per_class:
        names = [m["metric"].split("/", 1)[1] for m in per_class[0][1]]
        blocks.append({"kind": "p", "text": "Per-class ΔAP50 [interval] (n/a: no test object of the class)."})
        cells = [[*ident[:2], *(_diff_text(m) for m in ms)] for ident, ms in per_class]
        blocks.append({"kind": "table", "id": "paired-per-class", "head": ["run", "id", *names], "rows": cells,
                       "classes": [""] * len(cells)})
    return blocks
