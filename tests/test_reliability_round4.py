"""Round 4 of the bad-input and fault tests (issue 31): what the error analysis, the best checkpoint, the
report's folder, the offline queue and the loader workers do when the input is odd or the process is hit,
each reproduced with the real thing (a real dataset, a real kill, a real MLflow store) before its fix."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import pause_env, run_cli, tiny_params, wait_paused
from PIL import Image

pytestmark = pytest.mark.timeout(900)   # a hang guard


def cli(project, *args, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=project, env=env or os.environ,
                          capture_output=True, text=True, timeout=600)


def one_line(r, *needles, code=2):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == code and len(lines) == 1, r.stderr
    assert "internal error" not in lines[0] and all(n in lines[0] for n in needles), lines[0]
    return lines[0]


# --- a COCO dataset of the user's: 4 training images, a test split given per test ---------------------------

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def coco_dataset(root: Path, test_images: dict, test_boxes: list) -> None:
    """root/img holds the images; train.json 4 plain images with a box each, test.json `test_images`
    ({file name: (w, h)}, ids from 100) with `test_boxes` [(file name, x, y, w, h, category)]."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.new("RGB", (60, 50), (40 * i, 90, 20)).save(root / "img" / f"t{i}.jpg")
    for name, size in test_images.items():
        Image.new("RGB", size, (200, 30, 30)).save(root / "img" / name)
    train = {"images": [{"id": i, "file_name": f"t{i}.jpg", "width": 60, "height": 50} for i in range(4)],
             "annotations": [{"id": i + 1, "image_id": i, "category_id": 1 + i % 2, "bbox": [5, 5, 20, 20]}
                             for i in range(4)], "categories": CATEGORIES}
    ids = {name: 100 + k for k, name in enumerate(test_images)}
    test = {"images": [{"id": ids[n], "file_name": n, "width": s[0], "height": s[1]} for n, s in test_images.items()],
            "annotations": [{"id": k + 1, "image_id": ids[n], "category_id": c, "bbox": [x, y, w, h]}
                            for k, (n, x, y, w, h, c) in enumerate(test_boxes)], "categories": CATEGORIES}
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps(test))


def coco_params(**overrides) -> dict:
    p = tiny_params(**overrides)
    p["data"].update(format="coco", root=".", val_fraction=0.0, coco={
        "train_ann": "train.json", "train_images": "img", "test_ann": "test.json", "test_images": "img"})
    p["decode"]["score_thresh"] = 0.0          # the untrained model's detections all count: errors everywhere
    p["tracking"]["enabled"] = False
    p["visualize"]["score_thresh"] = 0.0
    return p


@pytest.fixture(scope="module")
def coco_model(tmp_path_factory):
    """models/model.pt trained one epoch on the 4 training images (classes a, b)."""
    root = tmp_path_factory.mktemp("coco-model")
    coco_dataset(root, {"x.jpg": (60, 50)}, [("x.jpg", 5, 5, 20, 20, 1)])
    (root / "params.yaml").write_text(yaml.safe_dump(coco_params()))
    old = os.getcwd()
    os.chdir(root)
    try:
        for stage in ("prepare", "train"):
            r = run_cli(stage)
            assert r.exit_code == 0, r.stderr
    finally:
        os.chdir(old)
    return root / "models/model.pt"


@pytest.fixture
def coco_project(tmp_path, monkeypatch, coco_model):
    """make(test_images, test_boxes, **param overrides): a prepared project holding the trained model."""
    def make(test_images, test_boxes, **overrides):
        coco_dataset(tmp_path, test_images, test_boxes)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(coco_params(**overrides)))
        (tmp_path / "models").mkdir(exist_ok=True)
        shutil.copy2(coco_model, tmp_path / "models/model.pt")
        r = run_cli("prepare")
        assert r.exit_code == 0, r.stderr
        return tmp_path
    monkeypatch.chdir(tmp_path)
    return make


# --- the error analysis ------------------------------------------------------------------------------------

def test_a_test_split_without_any_box_is_evaluated(coco_project):
    """Every test image empty (a COCO test json without annotations): the detections are all background
    errors; TIDE used to index the empty ground truth (an internal error)."""
    project = coco_project({"e1.jpg": (60, 50), "e2.jpg": (60, 50)}, [])
    r = run_cli("evaluate")
    assert r.exit_code == 0, r.stderr
    errors = json.loads((project / "metrics/errors.json").read_text())
    assert errors["num_detections"] > 0 and errors["counts"]["Bkg"] == errors["num_detections"]
    assert errors["AP50"] == 0 and errors["main"]["Bkg"] is None      # fixing Bkg leaves no class to average
    assert set(c["AP50"] for c in errors["per_class"].values()) == {None}
    assert "classes without ground truth in the test split: a, b" in " ".join(r.stderr.split())


def test_strips_dots_and_large_photos_are_drawn_within_bounds(coco_project):
    """A 2 x 2000 strip, a 1 x 1 dot and a 6000 x 4000 photo among the test images: the worst-image panels
    and the detection drawings used to enlarge the strip 160 times (a 300-megapixel panel; evaluate was
    killed for memory at 18 GB) and draw the photo at full size."""
    from pipeline.drawing import MAX_SIDE
    images = {"strip.jpg": (2, 2000), "dot.jpg": (1, 1), "big.jpg": (6000, 4000), "plain.jpg": (60, 50)}
    boxes = [("strip.jpg", 0, 10, 2, 100, 1), ("dot.jpg", 0, 0, 1, 1, 1), ("big.jpg", 100, 100, 3000, 2000, 2),
             ("plain.jpg", 5, 5, 20, 20, 2)]
    project = coco_project(images, boxes, eval={**tiny_params()["eval"], "worst_images": 4},
                           visualize={"num_images": 4, "score_thresh": 0.0})
    for stage in ("evaluate", "visualize"):
        r = run_cli(stage)
        assert r.exit_code == 0, r.stderr
    worst = sorted((project / "plots/eval/worst").glob("*.png"))
    drawn = sorted((project / "plots/detections").glob("*.png"))
    assert len(worst) == 5 and len(drawn) == 5                         # 4 images and the mosaic, each
    for png in worst + drawn:
        with Image.open(png) as im:                                    # two images wide, a mosaic two panels
            assert max(im.size) <= 4 * MAX_SIDE + 100 and im.width * im.height < 20e6, (png.name, im.size)


@pytest.mark.slow
def test_a_thousand_worst_images_keep_the_mosaic_viewable(project):
    """eval.worst_images 1000 (its largest value) on 250 test images with errors: every image is drawn, the
    mosaic holds the first MOSAIC_MAX (all 250 made a 116-megapixel PNG and took 1.8 GB; 1000 would pass
    PIL's refusal limit)."""
    import warnings

    from pipeline.drawing import MOSAIC_MAX
    p = tiny_params()
    p["data"]["shapes"]["num_test"] = 250
    p["eval"]["worst_images"] = 1000
    p["tracking"]["enabled"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(p))
    for stage in ("prepare", "train", "evaluate"):
        r = run_cli(stage)
        assert r.exit_code == 0, r.stderr
    errors = json.loads((project / "metrics/errors.json").read_text())
    n = len(errors["worst"]["images"])
    assert n > MOSAIC_MAX and len(list((project / "plots/eval/worst").glob("*.png"))) == n + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        first = project / "plots/eval/worst" / f"01_{Path(errors['worst']['images'][0]['file']).stem}.png"
        with Image.open(project / "plots/eval/worst/mosaic.png") as im, Image.open(first) as panel:
            assert im.height <= -(-MOSAIC_MAX // 2) * panel.height
    said = " ".join(r.stderr.split())
    assert f"the {n} worst images in plots/eval/worst/ (mosaic.png: the first {MOSAIC_MAX})" in said


# --- loader workers ----------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """The process's children (Linux /proc)."""
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


@pytest.mark.slow
def test_a_killed_loader_worker_is_one_line_and_training_resumes(tmp_path):
    """The kernel's out-of-memory killer takes a loader worker mid-epoch (here a real SIGKILL): torch's
    RuntimeError, raised by its SIGCHLD handler, used to be reported as a bug in fcos-exp."""
    p = tiny_params(train={"epochs": 2}, data={**tiny_params()["data"], "num_workers": 2})
    p["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert cli(tmp_path, "prepare").returncode == 0
    env, release = pause_env(tmp_path, 4)                     # 3 steps an epoch: epoch 2's first step
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_paused(proc, release)
        workers = children(proc.pid)
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        release.touch()
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    lines = [line for line in err.splitlines() if line.strip().startswith("error")]
    assert proc.returncode == 2 and len(lines) == 1, err
    assert "a data loader worker process died (out of memory?" in lines[0] and "internal error" not in err
    import torch
    assert torch.load(tmp_path / "models/model.pt", weights_only=True)["epoch"] == 1
    r = cli(tmp_path, "train", "--resume")
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "models/model.pt", weights_only=True)["epoch"] == 2
