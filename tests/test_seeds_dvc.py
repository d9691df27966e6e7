"""`fcos-exp seeds` in a temporary git repository: real `dvc exp run --temp` experiments of an uncommitted
configuration (as `fcos-exp tune --apply` leaves params.yaml), their MLflow runs compared as one group of seed
repeats; `--queue` only queues."""
import json
import os
import subprocess

import mlflow
import pytest
import yaml
from conftest import git_project, tiny_params

EXPERIMENT = "seeds-tests"


def sh(*cmd, cwd, check=True):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.mark.slow
def test_seeds_run_as_experiments_and_compare_as_one_group(tmp_path, tracking_uri):
    repo = git_project(tmp_path / "repo", tiny_params(tracking={"enabled": True, "experiment": EXPERIMENT,
                                                                "log_every": 20}))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 0.003                                      # not committed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = (repo / "params.yaml").read_text()

    r = sh("fcos-exp", "seeds", "2", "--name", "rep", cwd=repo)
    assert "$ dvc exp run --temp -S train.seed=0 -n rep-seed0" in r.stderr and "ran 2 experiments" in r.stderr
    assert (repo / "params.yaml").read_text() == before and not (repo / "models/model.pt").exists()   # untouched
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    by_exp = {r.data.tags["dvc_exp"]: r for r in runs}
    assert set(by_exp) == {"rep-seed0", "rep-seed1"}
    assert [by_exp[f"rep-seed{s}"].data.params["train.seed"] for s in (0, 1)] == ["0", "1"]
    assert {r.data.params["train.lr"] for r in runs} == {"0.003"}
    assert len({r.data.tags["test_gt_sha256"] for r in runs}) == 1
    assert "rep-seed1" in sh("dvc", "exp", "show", "--json", cwd=repo).stdout

    r = sh("fcos-exp", "compare", "rep-seed0", "rep-seed1", cwd=repo, check=False)    # the test split is needed
    assert r.returncode == 2 and "data/prepared/test.json: not found" in r.stderr
    sh("dvc", "repro", "prepare", cwd=repo)                                           # from DVC's run cache
    single = json.loads(sh("fcos-exp", "compare", "rep-seed0", "rep-seed1", "--json", cwd=repo).stdout)
    assert single["A"]["runs"][0]["seed"] == "0" and single["B"]["runs"][0]["seed"] == "1"
    ap = next(m for m in single["metrics"] if m["metric"] == "AP")
    runs_ap = [by_exp[f"rep-seed{s}"].data.metrics["test/AP"] for s in (0, 1)]
    assert ap["diff"] == pytest.approx(runs_ap[1] - runs_ap[0], abs=1e-12)
    group = json.loads(sh("fcos-exp", "compare", "rep-seed0", "rep-seed1", "--seeds", "--json", cwd=repo).stdout)
    assert len(group["A"]["runs"]) == len(group["B"]["runs"]) == 2        # the same group on both sides: 0
    assert all((m["diff"], m["lo"], m["hi"]) in ((0.0, 0.0, 0.0), (None, None, None)) for m in group["metrics"])

    r = sh("fcos-exp", "seeds", "2", "--first", "5", "--queue", "--name", "q", cwd=repo)
    assert "queued 2 experiments (train.seed 5..6)" in r.stderr
    status = sh("dvc", "queue", "status", cwd=repo).stdout
    assert "q-seed5" in status and "q-seed6" in status and "Queued" in status
    sh("dvc", "queue", "remove", "--all", cwd=repo)
