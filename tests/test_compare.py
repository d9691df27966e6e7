"""`fcos-exp compare` and the report's paired comparison on runs logged to a real MLflow store as evaluate
leaves them (detections artifact, test-data hash), with a test split in data/prepared/test.json."""
import json
import re
import statistics

import mlflow
import pytest
from bootstrap_data import log_run, synthetic
from conftest import run_cli, tiny_params

from fcos.bootstrap import bootstrap, gt_hash, interval, match_table, paired
from pipeline.compare import Replicator, load_split
from pipeline.params import flatten
from pipeline.report.build import fetch_rows, search_all

EXPERIMENT = "compare-tests"
N_IMAGES = 60


def params(lr: float, seed: int) -> dict:
    p = flatten(tiny_params(tracking={"enabled": True, "experiment": EXPERIMENT, "log_every": 20}))
    return {**p, "train.lr": lr, "train.seed": seed}


@pytest.fixture(scope="module")
def store(tmp_path_factory, tracking_uri):
    """3 seeds of a weaker config (lr 0.002), 3 of a better one (lr 0.004), a run on other test data and
    one without detections; the project folder holds the test split they were scored on."""
    project = tmp_path_factory.mktemp("compare")
    gt, _ = synthetic(N_IMAGES, seed=11)
    (project / "data/prepared").mkdir(parents=True)
    (project / "data/prepared/test.json").write_text(json.dumps(gt))
    (project / "params.yaml").write_text(json.dumps(tiny_params(
        tracking={"enabled": True, "experiment": EXPERIMENT, "log_every": 20})))
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment(EXPERIMENT)
    dets, ids = {}, {}
    for lr, quality, name in ((0.002, 0.55, "weak"), (0.004, 0.9, "strong")):
        for s in range(3):
            dets[f"{name}-s{s}"] = synthetic(N_IMAGES, seed=11, quality=quality, det_seed=100 * s + len(name))[1]
            ids[f"{name}-s{s}"] = log_run(client, exp, f"{name}-s{s}", params(lr, s), gt, dets[f"{name}-s{s}"],
                                          project / "art", tags={"dvc_exp": f"exp-{name}-{s}"})
    other_gt, other_det = synthetic(N_IMAGES, seed=12)
    ids["other"] = log_run(client, exp, "other", params(0.01, 0), other_gt, other_det, project / "art")
    ids["bare"] = client.create_run(exp, run_name="bare").info.run_id
    client.log_batch(ids["bare"], params=[mlflow.entities.Param(k, str(v)) for k, v in params(0.03, 0).items()])
    client.set_terminated(ids["bare"], "FINISHED")
    return {"project": project, "gt": gt, "dets": dets, "ids": ids, "client": client,
            "other_sha": gt_hash(other_gt), "sha": gt_hash(gt)}


def exp_id(store) -> str:
    return store["client"].get_experiment_by_name(EXPERIMENT).experiment_id


def compare(store, monkeypatch, *args):
    monkeypatch.chdir(store["project"])
    return run_cli("compare", *args)


def compare_json(store, monkeypatch, *args) -> dict:
    r = compare(store, monkeypatch, *args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_two_runs_match_the_library_and_name_the_verdict(store, monkeypatch):
    out = compare_json(store, monkeypatch, "weak-s0", store["ids"]["strong-s0"][:7], "--resamples", "300")
    assert out["test_gt_sha256"] == store["sha"] and out["images"] == N_IMAGES and out["resamples"] == 300
    a = bootstrap(match_table(store["gt"], store["dets"]["weak-s0"]), 300, 0)
    b = bootstrap(match_table(store["gt"], store["dets"]["strong-s0"]), 300, 0)
    want = paired(a, b)
    rows = {m["metric"]: m for m in out["metrics"]}
    assert list(rows) == ["AP", "AP50", "AP50/a", "AP50/b", "AP50/c", "AP50/d"]
    for k, d in want.items():
        assert (rows[k]["diff"], rows[k]["lo"], rows[k]["hi"], rows[k]["se"]) == (d.diff, d.lo, d.hi, d.se)
        assert rows[k]["a"] == a.full[k] and rows[k]["a_std"] is None and rows[k]["a_n"] == 1
    logged = store["client"].get_run(store["ids"]["strong-s0"]).data.metrics["test/AP50"]
    assert rows["AP50"]["b"] == pytest.approx(logged, abs=1e-12)
    assert rows["AP"]["verdict"] == "B better" and rows["AP"]["lo"] > 0
    r = compare(store, monkeypatch, "exp-strong-0", "exp-weak-0", "--resamples", "300")   # dvc exp names
    assert r.exit_code == 0, r.stderr
    line = next(line for line in r.stdout.splitlines() if re.match(r"\W*AP50 ", line))
    assert "A better" in line and f"{-want['AP50'].diff:+.3f}" in line
    assert "A has 2 seed repeats: --seeds compares the groups" in r.stderr


def test_a_run_against_itself_is_exactly_zero(store, monkeypatch):
    out = compare_json(store, monkeypatch, "weak-s1", "weak-s1", "--resamples", "200")
    for m in out["metrics"]:
        assert (m["diff"], m["lo"], m["hi"], m["se"], m["verdict"]) == (0.0, 0.0, 0.0, 0.0, "within noise")


def test_seed_groups_pool_and_the_report_shows_the_same_numbers(store, monkeypatch, tmp_path):
    out = compare_json(store, monkeypatch, "weak-s2", "strong-s1", "--seeds", "--resamples", "300")
    assert [r["name"] for r in out["A"]["runs"]] == ["weak-s2", "weak-s1", "weak-s0"]     # newest first
    assert {r["seed"] for r in out["B"]["runs"]} == {"0", "1", "2"}
    ap = next(m for m in out["metrics"] if m["metric"] == "AP")
    fulls = [bootstrap(match_table(store["gt"], store["dets"][f"strong-s{s}"]), 2).full["AP"] for s in range(3)]
    assert ap["b"] == pytest.approx(sum(fulls) / 3, abs=1e-12) and ap["b_n"] == 3
    assert ap["b_std"] == pytest.approx(statistics.stdev(fulls), abs=1e-12)
    assert ap["verdict"] == "B better" and ap["lo"] > 0

    r = run_cli("report", "--baseline", "weak-s0", "--sort-by", "AP", "--resamples", "300", "--out", str(tmp_path))
    assert r.exit_code == 0, r.stderr
    md = (tmp_path / "report.md").read_text()
    board = [[c.strip().strip("*") for c in line.strip("|").split(" | ")]
             for line in md.split("## Leaderboard", 1)[1].split("\n## ", 1)[0].splitlines() if line.startswith("|")][2:]
    other_ap = store["client"].get_run(store["ids"]["other"]).data.metrics["test/AP"]
    order = sorted([("strong-s0 + 2 seed repeats", ap["b"]), ("weak-s0 + 2 seed repeats", ap["a"]),
                    ("other", other_ap)], key=lambda x: -x[1])
    assert [row[0] for row in board] == [name for name, _ in order] + ["bare"]
    assert board[0][5] == f"{ap['b']:.3f} ± {ap['b_std']:.3f}" and board[0][13] == "3"
    group = [r for r in fetch_rows(search_all(store["client"], exp_id(store)), None, None, None)
             if r.name.startswith("strong")]
    pooled = Replicator(store["client"], load_split(), 300, 0).side(group)
    lo, hi, _ = interval(pooled.values["AP"])
    assert board[0][14] == f"[{lo:.3f}, {hi:.3f}]" and lo < ap["b"] < hi
    assert board[[row[0] for row in board].index("other")][14] == "—" and board[3][5] == "—"
    paired_md = md.split("## Paired comparison against the baseline", 1)[1].split("\n## ", 1)[0]
    strong = next(line for line in paired_md.splitlines() if line.startswith("| strong-s0 + 2 seed repeats"))
    assert f"{ap['diff']:+.3f} [{ap['lo']:+.3f}, {ap['hi']:+.3f}] ▲" in strong and "B better" in strong
    assert re.search(r"\| other \| [0-9a-f]{8} \| 1 \| — \| was scored on other test data \(" +
                     store["other_sha"][:12], paired_md)
    assert "| bare |" in paired_md and "kept no test detections" in paired_md
    assert "Per-class ΔAP50" in paired_md


@pytest.mark.parametrize("args,message", [
    (["weak-s0", "other"], "A (weak-s0 ({weak})) was scored on test data {sha12}, B (other ({other})) on {other12}: "
                           "runs on different test splits are not compared"),
    (["weak-s0", "bare"], "run bare ({bare}) kept no test detections"),
    (["weak-s", "weak-s0"], "'weak-s': no run of experiment 'compare-tests' has this id, name or dvc exp name"),
])
def test_refusals_are_one_line(store, monkeypatch, args, message):
    ids = store["ids"]
    message = message.format(weak=ids["weak-s0"][:8], other=ids["other"][:8], bare=ids["bare"][:8],
                             sha12=store["sha"][:12], other12=store["other_sha"][:12])
    r = compare(store, monkeypatch, *args)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], r.stderr


def test_the_local_test_split_must_be_the_scored_one(store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((store["project"] / "params.yaml").read_text())
    r = run_cli("compare", "weak-s0", "strong-s0")
    assert r.exit_code == 2 and r.stderr.strip().startswith(
        f"error: data/prepared/test.json: not found; the runs were scored on test data {store['sha'][:12]}")
    (tmp_path / "data/prepared").mkdir(parents=True)
    gt = dict(store["gt"], annotations=store["gt"]["annotations"][1:])
    (tmp_path / "data/prepared/test.json").write_text(json.dumps(gt))
    r = run_cli("compare", "weak-s0", "strong-s0")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: data/prepared/test.json: test data {gt_hash(gt)[:12]}, but the runs were "
                               f"scored on {store['sha'][:12]}")
