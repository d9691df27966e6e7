"""Each stage end to end through the real CLI on the tiny config, with a real MLflow sqlite store."""
import json

import mlflow
import pytest
from conftest import run_cli, tiny_params

STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def test_help_lists_the_commands():
    r = run_cli("--help")
    assert r.exit_code == 0
    for cmd in ("prepare", "train", "evaluate", "visualize", "predict"):
        assert cmd in r.stdout


@pytest.mark.slow
def test_all_stages_write_their_files_and_one_mlflow_run(project, tracking_uri):
    for stage in ("prepare", "train", "evaluate", "visualize"):
        r = run_cli(stage)
        assert r.exit_code == 0, (stage, r.stdout, r.stderr)
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    assert summary["images"] == {"train": 12, "val": 2, "test": 4} and len(summary["classes"]) == 6
    ev = json.loads((project / "metrics/eval.json").read_text())
    assert set(STATS) <= set(ev) and ev["num_images"] == 4 and ev["inference_seconds"] > 0
    assert all(v is None or 0 <= v <= 1 for k, v in ev.items() if k in STATS)
    assert set(ev["per_class_AP50"]) == set(summary["classes"])
    tr = json.loads((project / "metrics/train.json").read_text())
    assert tr["epochs"] == 1 and tr["steps"] == 3 and tr["train_seconds"] > 0
    assert (project / "plots/train_steps.csv").read_text().count("\n") == 4
    for f in ("final_loss.png", "losses.png", "lr.png", "per_class_ap50.png"):
        assert (project / "plots/figures" / f).stat().st_size > 1000
    assert len(list((project / "plots/detections").glob("*.png"))) == 3     # 2 images + the mosaic
    stats = summary["stats"]
    assert {s: stats[s]["objects"] for s in stats} == summary["boxes"] and stats["test"]["images"] == 4
    assert (project / "plots/dataset/dataset.png").stat().st_size > 10000
    assert (project / "plots/dataset/objects_per_class.csv").read_text().count("\n") == 7
    pr = json.loads((project / "metrics/pr.json").read_text())
    assert list(pr["per_class"]) == summary["classes"] and pr["iou"] == 0.5
    matrix = pr["confusion"]["matrix"]   # each test box is counted once (found or missed), plus false positives
    assert len(matrix) == 7 and sum(map(sum, matrix)) >= summary["boxes"]["test"] > 0
    assert (project / "plots/pr_curve.csv").read_text().count("\n") == 102
    for f in ("pr_curve.png", "f1_curve.png", "confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert (project / "plots/eval" / f).stat().st_size > 5000

    run_id = json.loads((project / "models/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == str(tiny_params()["train"]["lr"])
    assert run.data.params["model.backbone"] == "resnet18"
    assert {"git_commit", "dataset_hash", "seed"} <= set(run.data.tags)
    assert run.data.metrics["test/AP50"] == pytest.approx(ev["AP50"])
    assert len(client.get_metric_history(run_id, "train/final_loss")) == 3
    assert len(client.get_metric_history(run_id, "train/lr")) == 3
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics", "figures", "detections", "eval", "dataset"} <= artifacts
    logged = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"eval/pr_curve.png", "eval/confusion_matrix_normalized.png"} <= logged
    assert "dataset/dataset.png" in {a.path for a in client.list_artifacts(run_id, "dataset")}
    assert "test/F1" in run.data.metrics
    # The detections are kept (metrics/detections.json.gz, an artifact) with the hash of the test data they were
    # scored on; AP and AP50 recomputed from them are evaluate's; their bootstrap standard errors are logged.
    from fcos.bootstrap import bootstrap, gt_hash, match_table
    from pipeline.detections import read_detections
    gt = json.loads((project / "data/prepared/test.json").read_text())
    assert ev["test_gt_sha256"] == gt_hash(gt) == run.data.tags["test_gt_sha256"]
    kept = bootstrap(match_table(gt, read_detections(project / "metrics/detections.json.gz")), 200)
    assert abs(kept.full["AP"] - ev["AP"]) < 1e-12 and abs(kept.full["AP50"] - ev["AP50"]) < 1e-12
    assert run.data.metrics["test/AP_se"] == ev["AP_se"] >= 0 and run.data.metrics["test/AP50_se"] == ev["AP50_se"]
    assert "metrics/detections.json.gz" in {a.path for a in client.list_artifacts(run_id, "metrics")}
    # MLflow 3's UI: a model-training experiment, the checkpoint as the run's model, the data as an input
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    (model_out,) = run.outputs.model_outputs
    model = client.get_logged_model(model_out.model_id)
    assert model.source_run_id == run_id and str(model.status) == "READY"
    assert "model.pt" in {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "shapes-prepared" and dataset.dataset.source.endswith("data/prepared")

    out = project / "pred"
    r = run_cli("predict", str(project / "data/prepared/shapes/VOCdevkit/VOC2007/JPEGImages"), "--out", str(out),
                "--score-thresh", "0.0")
    assert r.exit_code == 0, r.stderr
    dets = json.loads((out / "detections.json").read_text())
    assert len(dets) == 18 and len(list(out.glob("*.png"))) == 18
    assert all({"box", "score", "label"} <= set(d) for item in dets for d in item["detections"])
    r = run_cli("predict", str(project / "data/prepared/shapes/VOCdevkit/VOC2007/JPEGImages"), "--out",
                str(project / "pred_f1"), "--score-thresh", "f1")    # each class's threshold from metrics/pr.json
    assert r.exit_code == 0, r.stderr
    f1 = json.loads((project / "pred_f1/detections.json").read_text())
    thresh = {c: v["threshold"] or pr["all"]["threshold"] or 0.3 for c, v in pr["per_class"].items()}
    assert all(d["score"] >= thresh[d["label"]] - 1e-4 for item in f1 for d in item["detections"])
    above = lambda margin: sum(d["score"] >= thresh[d["label"]] + margin for item in dets for d in item["detections"])
    assert above(1e-4) <= sum(len(i["detections"]) for i in f1) <= above(-1e-4)   # JSON scores: 4 decimals


@pytest.mark.parametrize("args,message", [
    (["train", "--params", "nope.yaml"], "nope.yaml: params file not found"),
    (["evaluate"], "models/model.pt: not found"),
    (["train"], "data/prepared/train.json: not found"),
    (["predict", "missing_dir"], "missing_dir: no such file or folder"),
])
def test_bad_input_is_one_line_and_non_zero(project, args, message):
    r = run_cli(*args)
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


def test_a_bug_is_reported_as_one_line_that_says_so_and_a_commands_exit_code_passes():
    """An unexpected exception inside a command is a bug: one line saying so, exit 1; typer.Exit(n) from a
    command keeps its code."""
    import typer

    from pipeline.cli import _user_errors
    with pytest.raises(typer.Exit) as e, _user_errors():
        {}["missing"]
    assert e.value.exit_code == 1
    with pytest.raises(typer.Exit) as e, _user_errors():
        raise typer.Exit(143)
    assert e.value.exit_code == 143
