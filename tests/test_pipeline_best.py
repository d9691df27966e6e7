"""The best checkpoint through the commands: a `fcos-exp train` killed (SIGKILL) after a chosen epoch and
resumed ends with the same models/best.pt, stop epoch and metrics/train.json as a run never stopped;
eval.checkpoint picks what evaluate and predict load; misuse is a one-line error; an earlier training's
best.pt, left by a kill or a full disk, is never scored or kept as this training's."""
import json
import shutil
import signal
import subprocess
import sys

import mlflow
import pytest
import torch
import yaml
from conftest import pause_env, run_cli, tiny_params, wait_paused

STEPS_PER_EPOCH = 3     # tiny_params: 12 training images, batch 4
# best_metric AP, patience 3: on the machine this was written on, validation AP rose to epoch 5 and then fell,
# so training stopped after epoch 8 of 10; the test reads the epochs off the run itself
TRAIN = {"epochs": 10, "eval_every": 1, "best_metric": "AP", "patience": 3}


def write_params(folder, **sections):
    (folder / "params.yaml").write_text(yaml.safe_dump(tiny_params(**sections), sort_keys=False))


def train(folder, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "pipeline", "train", *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc):
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return err


def ckpt(folder, name):
    return torch.load(folder / "models" / name, weights_only=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tracking_uri):
    """A project trained once, never stopped: validation every epoch, patience 3."""
    folder = tmp_path_factory.mktemp("straight")
    write_params(folder, train=TRAIN)
    subprocess.run([sys.executable, "-m", "pipeline", "prepare"], cwd=folder, check=True, capture_output=True)
    return folder, finished(train(folder))


@pytest.mark.slow
def test_killed_train_resumes_to_the_same_best_and_stop(straight, tmp_path):
    folder, stderr = straight
    summary = json.loads((folder / "metrics/train.json").read_text())
    best, last = ckpt(folder, "best.pt"), ckpt(folder, "model.pt")
    values = [h["val_AP"] for h in last["history"]]
    best_epoch = values.index(max(values)) + 1                        # the first of equal values
    assert best["epoch"] == summary["best_epoch"] == best_epoch and summary["best_value"] == max(values)
    assert summary["best_metric"] == "AP" and summary["epochs"] == len(values)
    assert summary["stopped_early"] == (len(values) < TRAIN["epochs"])
    if summary["stopped_early"]:
        assert len(values) - best_epoch == TRAIN["patience"] and "stopped early after epoch" in stderr
    run = mlflow.MlflowClient().get_run(json.loads((folder / "models/mlflow_run.json").read_text())["run_id"])
    assert run.data.metrics["best_epoch"] == best_epoch
    assert run.data.metrics["best_val_AP"] == pytest.approx(max(values))

    # Killed when the best is behind and the patience count has begun (if the run has such an epoch).
    kill_after = best_epoch + 1 if best_epoch + 1 < len(values) else max(1, len(values) - 1)
    write_params(tmp_path, train=TRAIN)
    shutil.copytree(folder / "data/prepared", tmp_path / "data/prepared")
    env, release = pause_env(tmp_path, kill_after * STEPS_PER_EPOCH + 1)
    proc = train(tmp_path, env=env)
    wait_paused(proc, release)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert ckpt(tmp_path, "model.pt")["epoch"] == kill_after
    finished(train(tmp_path, "--resume"))
    assert json.loads((tmp_path / "metrics/train.json").read_text()).items() >= \
        {k: v for k, v in summary.items() if k not in ("train_seconds", "images_per_second")}.items()
    resumed = ckpt(tmp_path, "best.pt")
    assert resumed["epoch"] == best_epoch and resumed["best"] == best["best"]
    assert all(torch.equal(resumed["model"][k], best["model"][k]) for k in best["model"])


@pytest.mark.slow
def test_eval_checkpoint_picks_what_evaluate_and_predict_load(straight, monkeypatch):
    folder, _ = straight
    monkeypatch.chdir(folder)
    write_params(folder, train=TRAIN, eval={"checkpoint": "best"})
    r = run_cli("evaluate")
    assert r.exit_code == 0, r.stderr
    assert json.loads((folder / "metrics/eval.json").read_text())["checkpoint"] == "best"
    images = str(folder / "data/prepared/shapes/VOCdevkit/VOC2007/JPEGImages")
    found = {}
    choices = {"param": [], "best": ["--model", "models/best.pt"], "last": ["--model", "models/model.pt"]}
    for name, model in choices.items():
        r = run_cli("predict", images, "--out", f"pred_{name}", "--score-thresh", "0.0", *model)
        assert r.exit_code == 0, r.stderr
        found[name] = [i["detections"] for i in json.loads((folder / f"pred_{name}/detections.json").read_text())]
    assert found["param"] == found["best"]
    if ckpt(folder, "best.pt")["epoch"] != ckpt(folder, "model.pt")["epoch"]:
        assert found["param"] != found["last"]


def test_patience_or_best_without_validation_is_a_one_line_error(project):
    cases = [({"train": {"patience": 2}}, "train.patience: counts validations, so it needs eval_every > 0"),
             ({"eval": {"checkpoint": "best"}}, "eval.checkpoint: best needs validation during training")]
    for overrides, message in cases:
        write_params(project, **overrides)
        r = run_cli("train")
        lines = r.stderr.strip().splitlines()
        assert r.exit_code != 0 and len(lines) == 1 and message in lines[0], r.stderr


@pytest.mark.slow
def test_best_of_a_run_that_never_validated_is_refused(project):
    """eval_every 2 in a 1-epoch run: no validation ran, so models/best.pt holds the last epoch and says so."""
    write_params(project, train={"eval_every": 2})
    assert run_cli("prepare").exit_code == 0 and run_cli("train").exit_code == 0
    assert ckpt(project, "best.pt")["best"]["epoch"] is None
    write_params(project, train={"eval_every": 2}, eval={"checkpoint": "best"})
    r = run_cli("evaluate")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1, r.stderr
    assert "models/best.pt: training recorded no validation AP50" in lines[0] and "train.eval_every" in lines[0]
    assert not (project / "metrics/eval.json").exists()


# --- the best checkpoint -----------------------------------------------------------------------------------

def weights(path):
    return torch.load(path, weights_only=True)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_params(folder, **train):
    p = tiny_params(train={"eval_every": 1, **train})
    p["tracking"]["enabled"] = False
    p["eval"]["checkpoint"] = "best"
    (folder / "params.yaml").write_text(yaml.safe_dump(p))


@pytest.mark.slow
def test_best_of_an_earlier_training_is_refused_after_a_kill(tmp_path, monkeypatch):
    """Trained once with validation every epoch; trained again from the start with validation every second
    epoch and killed (SIGKILL) in epoch 2: models/model.pt is the new training's epoch 1, models/best.pt still
    the earlier training's best epoch, which evaluate used to score (and log into the new run). Only the
    killed training runs in a process of its own."""
    monkeypatch.chdir(tmp_path)
    train_params(tmp_path, epochs=2)
    assert run_cli("prepare").exit_code == 0 and run_cli("train").exit_code == 0
    older = weights(tmp_path / "models/best.pt")
    train_params(tmp_path, epochs=2, eval_every=2, lr=0.004)
    env, release = pause_env(tmp_path, 4)                         # 3 steps an epoch
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "train"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_paused(proc, release)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert same_weights(weights(tmp_path / "models/best.pt"), older)
    images = str(tmp_path / "data/prepared/shapes/VOCdevkit/VOC2007/JPEGImages")
    for command in (["evaluate"], ["visualize"], ["predict", images]):
        r = run_cli(*command)
        lines = [line for line in r.stderr.splitlines() if line.startswith("error")]
        assert r.exit_code == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith("error: models/best.pt: not the best epoch of the training in models/model.pt "
                                   "(it holds epoch ") and "records no validated epoch yet" in lines[0]
    assert not (tmp_path / "metrics/eval.json").exists()
    assert run_cli("train", "--resume").exit_code == 0
    assert run_cli("evaluate").exit_code == 0


@pytest.mark.slow
def test_a_full_disk_at_the_best_checkpoint_leaves_no_earlier_best_in_its_place(tmp_path, monkeypatch):
    """models/ on a real tmpfs with room for the new last checkpoint but not for the best one, and an earlier
    training's models/best.pt with the same record (epoch 1, AP50 0: the weights hardly move at lr 1e-9).
    Training stops in one line after writing model.pt; evaluate used to score the earlier training's weights,
    and a resume kept them as the best (the records matched)."""
    monkeypatch.chdir(tmp_path)
    train_params(tmp_path, epochs=1, lr=1e-9)
    assert run_cli("prepare").exit_code == 0 and run_cli("train").exit_code == 0
    older = tmp_path / "older-best.pt"
    shutil.move(tmp_path / "models/best.pt", older)
    shutil.rmtree(tmp_path / "models")
    models = tmp_path / "models"
    models.mkdir()
    w = older.stat().st_size
    size = w + 3 * w + w // 2                     # the earlier best, the new last (about 3x: Adam's state), half a best
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(models)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        shutil.copy2(older, models / "best.pt")
        train_params(tmp_path, epochs=2, lr=1e-9, seed=5)          # another training: other initial weights
        r = run_cli("train")
        lines = [line for line in r.stderr.splitlines() if line.startswith("error")]
        assert r.exit_code == 2 and lines == ["error: models/best.pt: checkpoint not written (No space left on "
                                               "device); the previous checkpoint is kept"], r.stderr
        last = torch.load(models / "model.pt", weights_only=True)
        assert last["epoch"] == 1 and not same_weights(last["model"], weights(older))
        # a process of its own: in this one, its traceback would keep the file mapped
        r = subprocess.run([sys.executable, "-m", "pipeline", "evaluate"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 2 and "it holds other weights than epoch 1 of the last checkpoint" in r.stderr, r.stderr
        kept = tmp_path / "kept"
        shutil.copytree(models, kept)
    finally:
        subprocess.run(["umount", str(models)])
    shutil.rmtree(models)
    shutil.move(kept, models)                       # room again: the user freed the disk
    assert run_cli("train", "--resume").exit_code == 0
    best = torch.load(models / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and same_weights(best["model"], last["model"])   # ties keep epoch 1: this training's
    assert run_cli("evaluate").exit_code == 0
