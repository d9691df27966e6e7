"""Faults and bad inputs of the pipeline (issue 15, round 2): each gives one line naming the file and the
problem and a non-zero exit, or is handled without losing data; never a traceback, a hang or a silent
acceptance."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli, tiny_params


def set_params(project: Path, **sections) -> None:
    p = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        p[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(p))


def one_error(r, *needles: str) -> str:
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.exit_code != 0, r.stdout
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert len(lines) >= 1 and all(any(n in line for line in lines) for n in needles), r.stderr
    return lines[0]


@pytest.mark.parametrize("section,key,value,message", [
    ("train", "warmup_epochs", float("inf"), "train.warmup_epochs: must be a finite number"),
    ("train", "clip_grad_norm", float("nan"), "train.clip_grad_norm: must be a finite number"),
    ("train", "weight_decay", float("nan"), "train.weight_decay: must be a finite number"),
    ("train", "device", "banana", "train.device: must be auto, cpu, cuda"),
    ("train", "milestones", ["a"], "train.milestones: item 0: must be a number"),
    ("data", "classes", [["a", "b"]], "data.classes: must be null or a non-empty list of class names"),
    ("data", "classes", [True, False], "data.classes: must be null or a non-empty list of class names (quote"),
    ("tracking", "experiment", "", "tracking.experiment: must be a non-empty string"),
    ("model", "backbone", "vgg16", "model.backbone: unknown backbone 'vgg16'"),
    ("decode", "nms_thresh", 0, "decode.nms_thresh: must be > 0"),
])
def test_params_that_used_to_pass_validation_are_refused(project, section, key, value, message):
    p = yaml.safe_load((project / "params.yaml").read_text())
    p[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(p))
    one_error(run_cli("prepare"), f"params.yaml: {message}")


def test_nan_min_radius_and_yaml_bombs_are_refused(project):
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["data"]["shapes"]["min_radius"] = float("nan")
    (project / "params.yaml").write_text(yaml.safe_dump(p))
    one_error(run_cli("prepare"), "data.shapes.min_radius: must be a finite number")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}]\n"
        for p_, c in zip("abcdefgh", "bcdefghi"))
    Path("bomb.yaml").write_text(bomb)
    assert len(bomb) < 2000
    one_error(run_cli("prepare", "--params", "bomb.yaml"), "bomb.yaml: too many values")


def test_cuda_asked_for_without_a_gpu(project):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    set_params(project, train={"device": "cuda"})
    assert run_cli("prepare").exit_code == 0
    one_error(run_cli("train"), "train.device: cuda asked for, but torch sees no CUDA GPU")


def test_tune_with_zero_trials_is_refused(project):
    r = run_cli("tune", "--trials", "0")
    assert r.exit_code == 2 and "Invalid value" in r.output and not Path("experiments/optuna.journal").exists()


def test_validation_without_a_validation_split_stops_before_training(project):
    set_params(project, data={"val_fraction": 0.0}, train={"eval_every": 1})
    assert run_cli("prepare").exit_code == 0
    one_error(run_cli("train"), "data/prepared/val.json: no validation images")
    assert not Path("models/model.pt").exists()


def test_validation_split_without_boxes_stops_before_training(project):
    """Validation images that all lack boxes make AP undefined (a tuning study would score every trial 0)."""
    set_params(project, train={"eval_every": 1})
    assert run_cli("prepare").exit_code == 0
    val = json.loads(Path("data/prepared/val.json").read_text())
    Path("data/prepared/val.json").write_text(json.dumps({**val, "annotations": []}))
    one_error(run_cli("train"), "data/prepared/val.json: none of the 2 validation images has a box")
    assert not Path("models/model.pt").exists()


def test_empty_splits_are_refused_by_prepare(project):
    set_params(project, data={"val_fraction": 0.9})
    p = yaml.safe_load(Path("params.yaml").read_text())
    p["data"]["shapes"]["num_trainval"] = 2
    Path("params.yaml").write_text(yaml.safe_dump(p))
    one_error(run_cli("prepare"), "data.val_fraction: 0.9 leaves no training image")


def trained(project):
    for stage in ("prepare", "train"):
        assert run_cli(stage).exit_code == 0


def test_resume_refuses_a_checkpoint_of_another_model_or_classes(project):
    trained(project)
    set_params(project, model={"fpn_channels": 32})
    one_error(run_cli("train", "--resume"), "models/model.pt: trained with other model params (model.fpn_channels)")


def test_plain_state_dict_or_foreign_object_as_model_pt(project):
    trained(project)
    state = torch.load("models/model.pt", weights_only=True)["model"]
    torch.save(state, "models/model.pt")
    one_error(run_cli("evaluate"), "models/model.pt: not an fcos-exp checkpoint (a plain state dict")
    one_error(run_cli("train", "--resume"), "models/model.pt: not an fcos-exp checkpoint")
    torch.save([1, 2, 3], "models/model.pt")
    one_error(run_cli("evaluate"), "models/model.pt: not an fcos-exp checkpoint (list")


def test_resumed_training_keeps_the_step_log_of_finished_epochs(project):
    """The step log is rewritten atomically with the rows up to the checkpoint, then appended: a resume
    that dies at once (here: refused) loses nothing."""
    set_params(project, train={"epochs": 2})
    trained(project)
    rows = Path("plots/train_steps.csv").read_text()
    set_params(project, train={"epochs": 3})
    from pipeline.steplog import StepLog
    log = StepLog(Path("plots/train_steps.csv"), resume_step=6)
    log.file.close()
    assert Path("plots/train_steps.csv").read_text() == rows
    assert run_cli("train", "--resume").exit_code == 0
    after = Path("plots/train_steps.csv").read_text().splitlines()
    assert after[: len(rows.splitlines())] == rows.splitlines() and len(after) == 1 + 9


def test_a_full_disk_while_checkpointing_leaves_the_old_checkpoint_and_no_temp_file(tmp_path):
    """A real full filesystem (a 1 MB tmpfs): a small checkpoint fits, a 4 MB one does not."""
    from fcos.checkpoint import load_checkpoint, save_checkpoint
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        path = disk / "ck.pt"
        good = {"model": {}, "model_config": {}, "classes": ["a"], "epoch": 1, "global_step": 3}
        save_checkpoint(path, good)
        with pytest.raises(OSError) as e:
            save_checkpoint(path, {**good, "epoch": 2, "model": {"w": torch.zeros(1 << 20)}})
        assert e.value.filename == str(path) and "the previous checkpoint is kept" in str(e.value)
        assert "No space left on device" in str(e.value) and "enforce" not in str(e.value)
        assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in disk.iterdir()] == ["ck.pt"]
    finally:
        subprocess.run(["umount", str(disk)])


def test_two_trainings_in_one_folder_one_refuses(project):
    assert run_cli("prepare").exit_code == 0
    set_params(project, train={"epochs": 30})
    env = {**os.environ, "NO_COLOR": "1"}
    first = subprocess.Popen([sys.executable, "-m", "pipeline", "train"], cwd=project, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import time
        deadline = time.monotonic() + 300   # wait (by the lock file's holder, not a sleep) until it trains
        while not Path("plots/train_steps.csv").is_file() or Path("plots/train_steps.csv").stat().st_size < 40:
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-m", "pipeline", "train"], cwd=project, env=env,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and "another `fcos-exp train` is running in this folder" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.terminate()
        first.wait(timeout=120)


def test_predict_never_writes_over_its_inputs_and_keeps_every_output(project, tmp_path):
    trained(project)
    from PIL import Image
    photos, other = tmp_path / "photos", tmp_path / "other"
    photos.mkdir(), other.mkdir()
    Image.new("RGB", (64, 48), 90).save(photos / "x.png")
    Image.new("RGB", (64, 48), 90).save(other / "x.png")
    Image.new("RGB", (64, 48), 90).save(other / "x-2.png")    # a name the numbering gives too
    before = (photos / "x.png").read_bytes()
    one_error(run_cli("predict", str(photos), "-o", str(photos)), "would replace the input image")
    assert (photos / "x.png").read_bytes() == before
    out = tmp_path / "out"
    r = run_cli("predict", str(photos), str(other), "-o", str(out))
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["x-2.png", "x-3.png", "x.png"]   # one per input
    pairs = [(d["file"], d["output"]) for d in json.loads((out / "detections.json").read_text())]
    assert pairs == [(str(photos / "x.png"), str(out / "x.png")), (str(other / "x-2.png"), str(out / "x-2.png")),
                     (str(other / "x.png"), str(out / "x-3.png"))]


def test_tracking_uri_of_a_project_path_with_sqlite_special_characters(tmp_path, monkeypatch):
    from pipeline.errors import UserError
    from pipeline.tracking import tracking_uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("100%", "what?"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        with pytest.raises(UserError, match="% \\? #"):
            tracking_uri()


def test_sync_after_a_partial_sync_and_with_the_server_down(project, tmp_path, monkeypatch):
    """Offline runs are created on sync; ops kept after a failed send carry the real id; ops of a run that is
    gone are dropped and counted; an unreachable server is one line."""
    pending = Path("models/mlflow_pending.jsonl")
    pending.parent.mkdir(exist_ok=True)
    records = [{"run": "pending-1", "op": "create", "payload": {"experiment": "tests", "run_name": "offline"}},
               {"run": "pending-1", "op": "metrics", "payload": [["m", 1.0, 0, 0]]},
               {"run": "0123456789abcdef0123456789abcdef", "op": "metrics", "payload": [["m", 1.0, 0, 0]]},
               {"run": "pending-2", "op": "params", "payload": {"a": "1"}}]
    pending.write_text("".join(json.dumps(r) + "\n" for r in records))
    r = run_cli("sync")
    assert r.exit_code == 0, r.stderr
    assert "sent 2 tracking operations" in r.stderr and "dropped 2" in r.stderr and not pending.exists()
    pending.write_text(json.dumps(records[0]) + "\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    one_error(run_cli("sync"), "http://127.0.0.1:9: MLflow unreachable")
    assert pending.exists()
    one_error(run_cli("report"), "http://127.0.0.1:9: MLflow unreachable")


def test_a_non_journal_storage_file_is_named(project):
    Path("notes.txt").write_text("not a journal\n")
    Path("experiments").mkdir()
    Path("experiments/tune_space.yaml").write_text("train.lr: {type: float, low: 0.001, high: 0.01}\n")
    one_error(run_cli("tune", "--trials", "1", "--storage", "notes.txt"), "notes.txt")


def test_tiny_params_still_valid():
    from pipeline.params_schema import validate
    assert validate(tiny_params()) == []


def test_a_prepared_image_deleted_since_stops_evaluate_and_train_in_one_line(project):
    trained(project)
    test = json.loads((project / "data/prepared/test.json").read_text())
    gone = project / "data/prepared" / test["image_root"] / test["images"][0]["file_name"]
    gone.unlink()
    line = one_error(run_cli("evaluate"), "data/prepared/test.json: the prepared test split is damaged",
                     "run `fcos-exp prepare` again")
    assert gone.name in line and not (project / "metrics/eval.json").exists()
    train = json.loads((project / "data/prepared/train.json").read_text())
    (project / "data/prepared" / train["image_root"] / train["images"][0]["file_name"]).unlink()
    one_error(run_cli("train"), "data/prepared/train.json: the prepared train split is damaged")


@pytest.mark.slow
def test_a_full_disk_at_the_checkpoint_is_one_true_line(project):
    """A real full filesystem (a 1 MB tmpfs on models/): no torch internals in the message, and it says
    whether an earlier checkpoint is kept."""
    assert run_cli("prepare").exit_code == 0
    models = project / "models"
    models.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(models)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        line = one_error(run_cli("train"), "models/model.pt: checkpoint not written (No space left on device)",
                         "there is no earlier checkpoint")
        assert "enforce" not in line and not [p for p in models.iterdir() if p.name.startswith("model.pt")]
    finally:
        subprocess.run(["umount", str(models)])
