"""The evaluate stage's error analysis end to end on a trained tiny model, through the real CLI and a real
MLflow store: metrics/errors.json, the figures, the worst images, VOC's metric and the protocol in
eval.json, MLflow and the report; the trained model's real detections scored by tidecv and
object-detection-metrics; and the bad inputs (no detections, a class without ground truth, an empty test
split, a run from before the breakdown in the report)."""
import json
import shutil

import mlflow
import numpy as np
import pytest
import yaml
from conftest import run_cli, tiny_params
from PIL import Image

from fcos.tide import MAIN_ERRORS, SPECIAL_ERRORS, tide

EXPERIMENT = "errors-tests"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tracking_uri):
    """A tiny model trained 2 epochs and evaluated with both VOC metrics; (project, evaluate's result)."""
    import os
    project = tmp_path_factory.mktemp("errors")
    old = os.getcwd()
    os.chdir(project)
    try:
        p = tiny_params(tracking={"enabled": True, "experiment": EXPERIMENT, "log_every": 20})
        p["data"]["shapes"]["num_test"] = 8
        p["train"]["epochs"] = 2
        p["eval"].update(voc_metric=["voc07", "voc"], worst_images=3)
        (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        for stage in ("prepare", "train"):
            r = run_cli(stage)
            assert r.exit_code == 0, r.stderr
        r = run_cli("evaluate")
        assert r.exit_code == 0, r.stderr
        yield project, r
    finally:
        os.chdir(old)


def detections(project):
    """The trained model's detections on the test split, as evaluate computes them (category ids)."""
    from fcos.data import build_loader
    from fcos.engine import evaluate
    from pipeline.artifacts import load_dataset
    from pipeline.inference import load_trained
    from pipeline.params import load_params
    params = load_params(project / "params.yaml")
    model = load_trained(params, project / "models/model.pt")
    ds = load_dataset("test")
    m = evaluate(model.model, build_loader(ds, 4), project / "data/prepared/test.json", ds.cat_ids, model.device)
    return m["detections"]


@pytest.mark.slow
def test_evaluate_writes_errors_worst_images_voc_and_protocol(trained, tracking_uri):
    project, r = trained
    errors = json.loads((project / "metrics/errors.json").read_text())
    ev = json.loads((project / "metrics/eval.json").read_text())
    assert set(errors["main"]) == set(MAIN_ERRORS) and set(errors["special"]) == set(SPECIAL_ERRORS)
    assert errors["num_images"] == 8 and sum(errors["counts"].values()) > 0
    assert set(errors["per_class"]) == set(ev["per_class_AP50"])
    assert "ranked by the AP50 they lose" in errors["worst"]["rule"]
    worst = errors["worst"]["images"]
    assert 1 <= len(worst) <= 3 and [w["rank"] for w in worst] == list(range(1, len(worst) + 1))
    assert [w["AP50_lost"] for w in worst] == sorted((w["AP50_lost"] for w in worst), reverse=True)
    ranking = (project / "plots/errors_per_image.csv").read_text().splitlines()
    assert ranking[0] == "rank,image_id,file,AP50_lost," + ",".join(MAIN_ERRORS)
    assert [int(x.split(",")[1]) for x in ranking[1:len(worst) + 1]] == [w["image_id"] for w in worst]
    drawn = sorted((project / "plots/eval/worst").glob("*.png"))
    assert len(drawn) == len(worst) + 1 and Image.open(project / "plots/eval/worst/mosaic.png").width > 700
    assert (project / "plots/eval/errors.png").stat().st_size > 10000

    proto = ev["protocol"]
    assert set(proto) == {"detections", "coco", "errors", "voc07", "voc"}
    assert proto["detections"]["score_thresh"] == 0.05 and proto["coco"]["max_dets"] == [1, 10, 100]
    assert proto["coco"]["iou_thresholds"][0] == 0.5 and proto["voc07"]["interpolation"] == "11-point"
    assert proto["voc"]["interpolation"] == "all-point" and "difficult" in proto["voc07"]
    for name in ("voc07", "voc"):
        assert 0 <= ev[name]["mAP"] <= 1 and set(ev[name]["per_class_AP"]) == set(ev["per_class_AP50"])
    out = r.stdout
    for text in ("COCO AP50", "VOC07 11-point mAP@0.5", "VOC all-point mAP@0.5", "not interchangeable",
                 "Where AP50 is lost", "protocol: COCO AP@[0.50:0.95]"):
        assert text in out, text

    run_id = json.loads((project / "models/mlflow_run.json").read_text())["run_id"]
    run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
    metrics = run.data.metrics
    assert metrics["test/voc07_mAP"] == pytest.approx(ev["voc07"]["mAP"])
    assert metrics["test/errors/Loc"] == pytest.approx(errors["main"]["Loc"])
    assert metrics["test/errors/Bkg_count"] == errors["counts"]["Bkg"]
    assert run.data.tags["eval_protocol"].startswith("COCO AP@[0.50:0.95] 101-point, maxDets 100")
    logged = {a.path for a in mlflow.MlflowClient(tracking_uri).list_artifacts(run_id, "eval")}
    assert {"eval/errors.png", "eval/worst"} <= logged


@pytest.mark.slow
def test_real_detections_equal_tidecv_and_object_detection_metrics(trained):
    from test_eval_tide import assert_same, tidecv_breakdown
    project, _ = trained
    gt = json.loads((project / "data/prepared/test.json").read_text())
    dets = detections(project)
    assert len(dets) > 100
    ours = tide(gt, dets)
    assert_same(ours, tidecv_breakdown(gt, dets))
    errors = json.loads((project / "metrics/errors.json").read_text())   # what the stage wrote: the same
    assert errors["counts"] == ours.counts and errors["main"] == pytest.approx(ours.main)

    podm = pytest.importorskip("podm.metrics")
    golds = [podm.BoundingBox.of_bbox(a["image_id"], a["category_id"], a["bbox"][0], a["bbox"][1],
                                      a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])
             for a in gt["annotations"]]
    preds = [podm.BoundingBox.of_bbox(int(d[0]), int(d[6]), d[1], d[2], d[1] + d[3], d[2] + d[4], d[5])
             for d in dets]
    ev = json.loads((project / "metrics/eval.json").read_text())
    for name, method in (("voc07", podm.MethodAveragePrecision.ElevenPointsInterpolation),
                         ("voc", podm.MethodAveragePrecision.AllPointsInterpolation)):
        ref = podm.get_pascal_voc_metrics(golds, preds, 0.5, method)
        assert ev[name]["mAP"] == pytest.approx(podm.MetricPerClass.mAP(ref), abs=1e-12)


def copy_project(project, dst, **decode):
    """The trained project's prepared data and model in a new folder (tests that break them), its params
    with `decode` values and no tracking (the report test reads the module's runs)."""
    for part in ("data/prepared", "models/model.pt"):
        src, out = project / part, dst / part
        out.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, out)
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["decode"].update(decode)
    p["tracking"]["enabled"] = False
    (dst / "params.yaml").write_text(yaml.safe_dump(p))
    return dst


@pytest.mark.slow
def test_no_detections_at_all_gives_a_line_and_na(trained, tmp_path, monkeypatch):
    project = copy_project(trained[0], tmp_path, score_thresh=0.99)
    monkeypatch.chdir(project)
    r = run_cli("evaluate")
    assert r.exit_code == 0, r.stderr
    assert "no detections on the 8 test images (decode.score_thresh 0.99): every box is missed" in \
        " ".join(r.stderr.split())
    errors = json.loads((project / "metrics/errors.json").read_text())
    assert errors["num_detections"] == 0 and errors["main"]["Miss"] is None and errors["main"]["Loc"] == 0
    assert errors["counts"]["Miss"] > 0 and errors["worst"]["images"]            # images that miss boxes
    ev = json.loads((project / "metrics/eval.json").read_text())
    assert ev["voc07"]["mAP"] == 0 and ev["protocol"]["detections"]["score_thresh"] == 0.99


@pytest.mark.slow
def test_a_class_without_ground_truth_is_na_and_named(trained, tmp_path, monkeypatch):
    project = copy_project(trained[0], tmp_path)
    monkeypatch.chdir(project)
    gt_path = project / "data/prepared/test.json"
    gt = json.loads(gt_path.read_text())
    gone = gt["categories"][1]
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != gone["id"]]
    gt_path.write_text(json.dumps(gt))
    r = run_cli("evaluate")
    assert r.exit_code == 0, r.stderr
    assert f"classes without ground truth in the test split: {gone['name']}" in " ".join(r.stderr.split())
    errors = json.loads((project / "metrics/errors.json").read_text())
    c = errors["per_class"][gone["name"]]
    assert c["num_gt"] == 0 and c["AP50"] is None and set(c["main"].values()) == {None}
    ev = json.loads((project / "metrics/eval.json").read_text())
    assert ev["voc07"]["per_class_AP"][gone["name"]] is None and ev["per_class_AP50"][gone["name"]] is None


@pytest.mark.slow
def test_an_empty_test_split_is_one_line(trained, tmp_path, monkeypatch):
    project = copy_project(trained[0], tmp_path)
    monkeypatch.chdir(project)
    gt_path = project / "data/prepared/test.json"
    gt = json.loads(gt_path.read_text())
    gt_path.write_text(json.dumps({**gt, "images": [], "annotations": []}))
    r = run_cli("evaluate")
    assert r.exit_code != 0
    assert "data/prepared/test.json: the test split has no images" in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_report_shows_protocols_errors_worst_images_and_marks_older_runs(trained, tracking_uri, monkeypatch):
    project, _ = trained
    monkeypatch.chdir(project)
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    older = client.create_run(exp.experiment_id, run_name="older")   # evaluated before the breakdown existed
    client.log_metric(older.info.run_id, "test/AP50", 0.0)   # ranked after the module's run
    client.set_terminated(older.info.run_id, "FINISHED")
    r = run_cli("report")
    assert r.exit_code == 0, r.stderr
    md = (project / "reports/report.md").read_text()
    run_id = json.loads((project / "models/mlflow_run.json").read_text())["run_id"]
    metrics = client.get_run(run_id).data.metrics
    header = next(line for line in md.splitlines() if "evaluation protocol" in line)
    assert "COCO AP@[0.50:0.95]" in header and "1 older runs: not recorded" in header
    errors = md.split("## Where AP50 is lost", 1)[1].split("\n## ", 1)[0]
    assert "evaluated before the breakdown existed" in errors
    rows = {line.split(" | ")[1]: line for line in errors.splitlines() if line.startswith("| ") and " | " in line}
    assert f"| {metrics['test/errors/Loc']:.3f} |" in rows[run_id[:8]]
    assert rows[older.info.run_id[:8]].count("—") == 9
    protocols = md.split("## AP at IoU 0.5 by protocol", 1)[1].split("\n## ", 1)[0]
    assert f"{metrics['test/voc07_mAP']:.3f}" in protocols
    worst = md.split("## Worst test images of the best run", 1)[1].split("\n## ", 1)[0]
    assert "mosaic.png" in worst


def test_voc_metric_setting_is_validated():
    from pipeline.params_schema import validate
    p = tiny_params()
    for ok in (None, "voc07", "voc", ["voc07", "voc"]):
        p["eval"]["voc_metric"] = ok
        assert validate(p) == []
    for bad in ("voc12", ["voc07", "voc07"], 7):
        p["eval"]["voc_metric"] = bad
        assert validate(p) == [f"eval.voc_metric: must be null, voc07, voc or a list of them, got {bad!r}"]


def test_protocol_states_how_difficult_and_crowd_boxes_count():
    from pipeline.eval_protocol import protocol, summary
    from pipeline.params_schema import Params
    params = Params.from_dict(tiny_params())
    box = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}
    gt = lambda *flags: {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
                         "annotations": [{**box, "difficult": d, "iscrowd": c} for d, c in flags]}
    thresholds = np.linspace(0.5, 0.95, 10)
    counted = protocol(params, gt((1, 0), (1, 0), (0, 0)), thresholds, ["voc07"])
    assert counted["coco"]["difficult"] == "2 boxes counted as ordinary ground truth (data.eval_difficult: true)"
    assert counted["voc07"]["difficult"].startswith("2 boxes ignored: neither true nor false positives")
    assert "difficult: counted" in summary(counted) and "VOC07 11-point mAP@0.5, difficult ignored" in summary(counted)
    ignored = protocol(params, gt((1, 1), (0, 0), (0, 1)), thresholds, [])
    assert ignored["coco"]["difficult"] == "1 box ignored like crowd boxes (data.eval_difficult: false)"
    assert "1 crowd box (iscrowd)" in ignored["coco"]["crowd"] and "voc07" not in ignored
    assert "difficult: ignored" in summary(ignored) and "score >= 0.05, <= 100/image" in summary(ignored)
    assert protocol(params, gt((0, 0),), thresholds, [])["coco"]["difficult"] == "none in the test split"
