"""Round 4 of the bad-input and fault tests (issue 31): what the error analysis, the params files, the
tracking files, prepare's swap, the report's folder and the offline queue do when the input is odd or the
process is hit, each reproduced with the real thing (a real dataset, a real kill, a real MLflow store) before
its fix. The loader workers' faults are in test_reliability_loader.py."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, tiny_params
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


def test_fp16_inference_on_the_cpu_says_it_ran_float32(coco_project):
    """eval.amp fp16 on the CPU: autocast stays off there (a CUDA config runs anywhere), yet evaluate printed
    "amp fp16" for a float32 run."""
    project = coco_project({"x.jpg": (60, 50)}, [("x.jpg", 5, 5, 20, 20, 1)],
                           eval={**tiny_params()["eval"], "amp": "fp16", "device": "cpu"})
    r = run_cli("evaluate")
    assert r.exit_code == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert "amp none)" in said and "amp fp16" not in said
    assert (project / "metrics/eval.json").is_file()


# --- params.yaml -------------------------------------------------------------------------------------------

def test_yaml_merge_keys_are_read_and_a_key_given_twice_still_refused(project):
    """`<<: *anchor` (YAML's merge key, which yaml.safe_load and DVC read) was refused as "not valid YAML" by
    the check for keys given twice; explicit keys override merged ones, as YAML says."""
    (project / "over.yaml").write_text("base: params.yaml\neval:\n  <<: {batch_size: 2, worst_images: 3}\n"
                                       "  worst_images: 5\n")
    r = run_cli("sync", "--params", "over.yaml")
    assert r.exit_code == 0 and "nothing to sync" in r.stderr, r.stderr
    from pipeline.params import load_params
    p = load_params(project / "over.yaml")
    assert p.eval.batch_size == 2 and p.eval.worst_images == 5
    (project / "twice.yaml").write_text("base: params.yaml\neval:\n  <<: {batch_size: 2}\n  worst_images: 3\n"
                                        "  worst_images: 5\n")
    one_line(run_cli("sync", "--params", "twice.yaml"), "twice.yaml: not valid YAML (key 'worst_images' given twice")


# --- tracking files that are pipes -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlflow.db.lock", "mlflow.db"])
def test_a_pipe_at_the_store_or_its_lock_is_one_line_not_a_hang(tmp_path, name):
    """A FIFO where the sqlite store or its creation lock goes: open() of the lock waited for a reader
    forever, and sqlite on the store retried for minutes."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    os.mkfifo(tmp_path / name)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}   # the project's own store
    r = subprocess.run([sys.executable, "-m", "pipeline", "report"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {tmp_path / name}: not a regular file (a pipe, device")


@pytest.mark.parametrize("name", ["mlflow_run.json", "mlflow_pending.jsonl"])
def test_a_pipe_at_the_run_file_or_the_offline_queue_is_one_line_not_a_hang(coco_project, name):
    """A FIFO at models/mlflow_run.json (read by evaluate) or at the offline queue (appended to while MLflow is
    unreachable): reading or appending waited for the other end forever."""
    project = coco_project({"x.jpg": (60, 50)}, [("x.jpg", 5, 5, 20, 20, 1)])
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["tracking"]["enabled"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(p))
    os.mkfifo(project / "models" / name)
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}                  # nothing listens on port 9: offline
    if name == "mlflow_pending.jsonl":
        (project / "models/mlflow_run.json").write_text(json.dumps({"run_id": "pending-1", "tracking_uri":
                                                                    env["MLFLOW_TRACKING_URI"]}))
    r = subprocess.run([sys.executable, "-m", "pipeline", "evaluate"], cwd=project, env=env, capture_output=True,
                       text=True, timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: models/{name}: not a regular file (a pipe, device")


# --- fcos-exp prepare's swap -------------------------------------------------------------------------------

def test_prepare_keeps_a_linked_prepared_folder_linked_and_readable(tmp_path):
    """data/prepared a link to another disk: prepare's swap replaced the link with a local folder (the data
    left the disk it was put on), left the link behind as data/.prepared-<pid>-old-* for ever (rmtree refuses
    links), and the new folder kept mkdtemp's private mode 0700."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    other = tmp_path / "other-disk"
    other.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data/prepared").symlink_to(other / "prepared")
    old = os.umask(0o022)
    try:
        for _ in range(2):                                   # the second swaps over the first
            r = cli(tmp_path, "prepare")
            assert r.returncode == 0, r.stderr
    finally:
        os.umask(old)
    assert (tmp_path / "data/prepared").is_symlink() and (other / "prepared/test.json").is_file()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["prepared"]
    assert not [p for p in other.iterdir() if p.name != "prepared"]
    assert (other / "prepared").stat().st_mode & 0o777 == 0o755


# --- a full disk names the file ----------------------------------------------------------------------------

def tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")


@pytest.mark.parametrize("folder, size", [("metrics", "4k"), ("plots", "16k")])
def test_a_full_disk_under_evaluate_names_the_file(coco_project, folder, size):
    """A real full filesystem on metrics/ or plots/: evaluate said only "[Errno 28] No space left on device"
    (a failed write names no file), and a figure was left half written."""
    project = coco_project({"x.jpg": (60, 50)}, [("x.jpg", 5, 5, 20, 20, 1)])
    tmpfs(project / folder, size)
    try:
        line = one_line(run_cli("evaluate"), ": No space left on device")
        assert re.fullmatch(rf"error: {folder}/\S+\.\w+: No space left on device", line), line   # a file named
        assert not [p for p in (project / folder).rglob("*") if p.is_file() and p.suffix in (".png", ".json")
                    and p.stat().st_size == 0]
    finally:
        subprocess.run(["umount", str(project / folder)])


def test_a_full_disk_under_the_report_names_its_folder(project):
    tmpfs(project / "out", "4k")
    try:
        one_line(run_cli("report", "--out", "out/report"), "error: out/report: No space left on device")
        assert not list((project / "out").iterdir())              # nothing half written, no staging folder
    finally:
        subprocess.run(["umount", str(project / "out")])


# --- fcos-exp report --out -----------------------------------------------------------------------------------

def test_a_hostile_report_manifest_deletes_nothing_of_the_user(project):
    """reports/.fcos-exp-report (the files the last report wrote, replaced by the next) naming a file beside the
    project, an absolute path, a note of the user's in reports/ and a file through a linked folder: the report
    used to delete every one of them."""
    (project / "keep.txt").write_text("mine")
    (project / "photos").mkdir()
    (project / "photos/x.png").write_text("a photo")
    reports = project / "reports"
    reports.mkdir()
    (reports / "notes.txt").write_text("my notes")
    (reports / "assets").symlink_to(project / "photos")
    (reports / ".fcos-exp-report").write_text(json.dumps(
        ["../keep.txt", str(project / "keep.txt"), "notes.txt", "assets", "assets/x.png", "assets/../../keep.txt",
         "report.md"]))
    r = run_cli("report")
    assert r.exit_code == 0, r.stderr
    assert (project / "keep.txt").read_text() == "mine" and (project / "photos/x.png").read_text() == "a photo"
    assert (reports / "notes.txt").read_text() == "my notes" and (reports / "report.html").is_file()


def test_a_report_folder_on_another_disk_is_written(project):
    """reports/ a link to a folder on another filesystem (a real tmpfs): the report, built beside it, moved in
    by renaming and failed with "Invalid cross-device link"."""
    tmpfs(project / "elsewhere", "10m")
    try:
        (project / "reports").symlink_to(project / "elsewhere")
        for _ in range(2):                                   # the second replaces the first's files
            r = run_cli("report")
            assert r.exit_code == 0, r.stderr
        assert (project / "elsewhere/report.html").is_file() and (project / "elsewhere/report.md").is_file()
        written = json.loads((project / "elsewhere/.fcos-exp-report").read_text())   # assets/ too where the
        assert {"report.html", "report.md"} <= set(written)                           # session's store has runs
        assert {p.name for p in (project / "elsewhere").iterdir()} == {".fcos-exp-report",
                                                                      *(Path(n).parts[0] for n in written)}
        assert not [p for p in project.iterdir() if p.name.startswith(".reports-")]
    finally:
        subprocess.run(["umount", str(project / "elsewhere")])
