"""ONNX export: the graph run by onnxruntime gives the PyTorch model's detections on the test images and on
other sizes (one graph, any H and W), through `fcos-exp export` and `fcos-exp predict --model model.onnx`."""
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli, tiny_params

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'fcos-exp[export]')")

from fcos import FCOS
from fcos.checkpoint import load_model, save_checkpoint
from fcos.data import CocoDataset, load_image
from fcos.export import OnnxDetector, match_detections


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny project: prepared shapes data, a model whose head gives well spread scores (an untrained one
    scores everything alike), exported by the CLI. Returns (folder, CLI result)."""
    from pipeline.params import model_config
    root = tmp_path_factory.mktemp("onnx")
    params = tiny_params(tracking={"enabled": False, "experiment": "tests", "log_every": 20})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert run_cli("prepare").exit_code == 0
        classes = CocoDataset(root / "data/prepared/test.json").classes
        torch.manual_seed(0)
        model = FCOS(model_config(params, len(classes))).eval()
        torch.nn.init.normal_(model.head.cls_logits.weight, std=1.0)
        torch.nn.init.constant_(model.head.cls_logits.bias, -6.0)
        save_checkpoint(root / "models/model.pt", {"model": model.state_dict(), "model_config": model.config.to_dict(),
                                                   "classes": classes})
        result = run_cli("export")
    assert result.exit_code == 0, result.stderr
    return root, result


def test_onnxruntime_gives_the_pytorch_detections_at_any_size(exported):
    root, _ = exported
    model, classes = load_model(root / "models/model.pt")
    detector = OnnxDetector(root / "models/model.onnx")
    assert detector.classes == classes
    tests = [load_image(r.file) for r in CocoDataset(root / "data/prepared/test.json").records]
    # Other sizes and aspects, one a rounding tie (129 x 128 -> 64.5 x 64 at min_size 64: Python rounds to 64).
    images = tests + [tests[0].resize(s) for s in ((150, 96), (129, 128), (200, 60), (333, 250), (40, 31))]
    total = 0
    for image in images:
        with torch.inference_mode():
            ref = {k: v.numpy() for k, v in model([torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
                                                   .float() / 255])[0].items()}
        out = detector(image)
        pairs = match_detections(ref, out)
        assert pairs is not None, (image.size, len(ref["labels"]), len(out["labels"]))
        box, score = pairs
        assert box < 1.0 and score < 1e-3, (image.size, box, score)
        assert out["boxes"].dtype == np.float32 and out["labels"].dtype == np.int64
        assert (out["boxes"][:, 2:] <= np.array(image.size)).all()         # in the input image's pixels
        total += len(out["labels"])
    assert total > 100     # the comparison has real detections to compare


def test_export_cli_checks_against_pytorch_on_the_test_images(exported):
    _, result = exported
    assert "onnxruntime vs PyTorch on 4 test images: labels identical" in result.stderr, result.stderr


def test_predict_with_the_onnx_model_matches_the_checkpoint(exported, monkeypatch):
    root, _ = exported
    monkeypatch.chdir(root)
    images = root / "data/prepared/shapes/VOCdevkit/VOC2007/JPEGImages"
    outs = {}
    for name, model in (("pt", []), ("onnx", ["--model", "models/model.onnx"])):
        r = run_cli("predict", str(images), "--out", f"pred_{name}", "--score-thresh", "0.2", *model)
        assert r.exit_code == 0, r.stderr
        outs[name] = json.loads((root / f"pred_{name}" / "detections.json").read_text())
    assert len(outs["onnx"]) == 18 and sum(len(i["detections"]) for i in outs["onnx"]) > 20
    for a, b in zip(outs["pt"], outs["onnx"], strict=True):
        assert a["file"] == b["file"]
        arrays = [{"boxes": np.array([d["box"] for d in x["detections"]]).reshape(-1, 4),
                   "scores": np.array([d["score"] for d in x["detections"]]),
                   "labels": np.array([d["label"] for d in x["detections"]])} for x in (a, b)]
        pairs = match_detections(*arrays)
        assert pairs is not None and pairs[0] < 1.0 and pairs[1] < 1e-3 + 1e-4   # JSON scores: 4 decimals


def test_a_missing_onnx_file_is_one_line(exported, monkeypatch):
    monkeypatch.chdir(exported[0])
    r = run_cli("predict", "data/prepared/shapes/VOCdevkit/VOC2007/JPEGImages", "--model", "nope.onnx")
    assert r.exit_code != 0 and r.stderr.strip() == "error: nope.onnx: no such file"
