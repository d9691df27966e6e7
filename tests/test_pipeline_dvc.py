"""The whole DVC pipeline in a temporary git repository: files, plots, MLflow run, no-op rerun, determinism."""
import json
import os
import subprocess

import mlflow
import pytest
import torch
import yaml
from conftest import git_project, tiny_params

TIMINGS = {"inference_seconds", "model_seconds", "data_seconds", "metric_seconds", "ms_per_image"}


def sh(*cmd, cwd, check=True):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return git_project(tmp_path_factory.mktemp("repo"), tiny_params())


def changed_stages(repo) -> set[str]:
    """The stages `dvc status` reports as changed (by their own deps, params or outputs)."""
    status = json.loads(sh("dvc", "status", "--json", cwd=repo).stdout or "{}")
    return {name for name in status if ":" not in name and name in ("prepare", "train", "evaluate", "visualize")}


def detections_md5(lock: dict) -> str:
    return next(o["md5"] for o in lock["stages"]["evaluate"]["outs"] if o["path"] == "metrics/detections.json.gz")


def eval_json(repo):
    return json.loads((repo / "metrics/eval.json").read_text())


@pytest.mark.slow
def test_dvc_repro_end_to_end(repo, tracking_uri):
    r = sh("dvc", "repro", cwd=repo)
    assert "Running stage 'visualize'" in r.stdout
    ev = eval_json(repo)
    assert ev["num_images"] == 4 and 0 <= ev["AP50"] <= 1
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "train", "evaluate", "visualize"}
    # validation off (the default): models/best.pt, a declared output, holds the last epoch and says so
    assert "models/best.pt" in {o["path"] for o in lock["stages"]["train"]["outs"]}
    best = torch.load(repo / "models/best.pt", weights_only=True)
    assert best["best"]["epoch"] is None and best["epoch"] == 1
    assert (repo / "plots/detections/mosaic.png").is_file() and (repo / "plots/figures/lr.png").is_file()

    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=repo).stdout)
    assert json.dumps(metrics).count("AP50") >= 1
    sh("dvc", "plots", "show", "-o", "dvc_plots", cwd=repo)
    assert (repo / "dvc_plots/index.html").is_file()
    page = (repo / "dvc_plots/index.html").read_text()
    for plot in ("precision-recall at IoU 0.5", "confusion matrix (IoU 0.5", "objects per class", "pr_curve.png",
                 "confusion_matrix_normalized.png", "dataset.png"):
        assert plot in page, plot
    assert {"metrics/pr.json", "plots/eval", "metrics/detections.json.gz"} <= \
        {o["path"] for o in lock["stages"]["evaluate"]["outs"]}

    run_id = json.loads((repo / "models/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    prepare_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    head = sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
    assert run.data.tags["git_commit"] == head and run.data.tags["seed"] == "0"
    assert run.data.tags["dataset_hash"] in (prepare_md5, "unknown")   # train runs before dvc.lock is written
    assert run.data.metrics["test/AP50"] == pytest.approx(ev["AP50"])
    assert len(client.get_metric_history(run_id, "train/final_loss")) == 3
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics", "figures", "detections", "eval"} <= artifacts and run.outputs.model_outputs

    # A second repro changes nothing and makes no new MLflow run.
    runs_before = len(client.search_runs([run.info.experiment_id]))
    r = sh("dvc", "repro", cwd=repo)
    assert "Data and pipelines are up to date" in r.stdout
    assert len(client.search_runs([run.info.experiment_id])) == runs_before

    # Same params and seed on CPU: identical metrics when forced to run again.
    first = eval_json(repo)
    first_train = json.loads((repo / "metrics/train.json").read_text())
    sh("dvc", "repro", "--force", cwd=repo)
    second = eval_json(repo)
    assert detections_md5(lock) == detections_md5(yaml.safe_load((repo / "dvc.lock").read_text()))   # same bytes
    assert {k: v for k, v in first.items() if k not in TIMINGS} == {k: v for k, v in second.items() if k not in TIMINGS}
    second_train = json.loads((repo / "metrics/train.json").read_text())
    assert first_train["final_loss"] == second_train["final_loss"]

    # A decoding change re-runs evaluate and visualize, never train.
    assert changed_stages(repo) == set()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["decode"]["nms_thresh"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert changed_stages(repo) == {"evaluate", "visualize"}
    r = sh("dvc", "repro", cwd=repo)
    assert "Running stage 'evaluate'" in r.stdout and "Running stage 'train'" not in r.stdout


@pytest.mark.slow
def test_dvc_exp_run_with_changed_param(repo, tracking_uri):
    if not (repo / "dvc.lock").is_file():
        sh("dvc", "repro", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline", cwd=repo, check=False)
    sh("dvc", "exp", "run", "-S", "train.lr=0.01", "-n", "lr01", cwd=repo)
    shown = sh("dvc", "exp", "show", "--json", cwd=repo).stdout
    assert "lr01" in shown and "0.01" in shown
    client = mlflow.MlflowClient(tracking_uri)   # the session's store: other tests' runs are there too
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id], "tags.dvc_exp = 'lr01'")
    assert len(runs) == 1 and runs[0].data.params["train.lr"] == "0.01"


@pytest.mark.slow
def test_dvc_repro_on_an_external_voc_dataset_without_tracking(tmp_path, voc_mini):
    """Tracking off (no MLflow at all), data.root outside the repository: dvc repro runs, and an edited
    annotation there makes prepare (and what follows) out of date."""
    import shutil
    data = shutil.copytree(voc_mini, tmp_path / "external" / "VOC2007")
    p = tiny_params(tracking={"enabled": False, "experiment": "tests", "log_every": 20})
    p["data"].update(format="voc", root=str(data), val_fraction=0.0)
    repo = git_project(tmp_path / "repo", p)
    sh("dvc", "repro", cwd=repo)
    assert eval_json(repo)["num_images"] == 4 and not (repo / "mlflow.db").exists()
    assert changed_stages(repo) == set()
    xml = data / "Annotations/2007_000032.xml"
    xml.write_text(xml.read_text().replace("<xmin>104</xmin>", "<xmin>110</xmin>"))
    assert "prepare" in changed_stages(repo)
