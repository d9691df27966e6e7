"""The configs users start from (experiments/*.yaml): overlays that load, cannot rot, and run prepare -> train
-> evaluate on real VOC photos at their own model and resolution; `fcos-exp use` and the README walkthrough."""
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, git_project, run_cli, tiny_params

from pipeline.params import load_params, read_params
from pipeline.params_schema import flatten

CONFIGS = sorted(p for p in (ROOT / "experiments").glob("*.yaml") if not p.name.startswith("tune_space"))
VOC_CONFIGS = [p for p in CONFIGS if p.stem.startswith("voc07_")]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)   # overlays name their base relative to the project root


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_is_a_valid_overlay_that_only_states_differences(config, in_repo):
    raw = yaml.safe_load(config.read_text())
    assert "base" in raw, f"{config.name}: a config states its base (params.yaml or another config)"
    params = load_params(config)   # merged and validated like params.yaml
    base = flatten(read_params(raw["base"]))
    own = flatten({k: v for k, v in raw.items() if k != "base"})
    assert own, f"{config.name} changes nothing"
    same = [k for k, v in own.items() if base.get(k, object()) == v]
    assert not same, f"{config.name} repeats values of its base: {same}"
    assert set(params.flat()) == set(flatten(read_params("params.yaml")))   # no key of its own invented


def test_overlay_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    Path("loop.yaml").write_text("base: loop.yaml\n")
    Path("typo.yaml").write_text("base: params.yaml\ntrain: {lr: .nan, epoch: 3}\n")
    Path("nobase.yaml").write_text("base: missing.yaml\n")
    r = run_cli("prepare", "--params", "loop.yaml")
    assert r.exit_code == 2 and "loop.yaml: base: loop.yaml includes itself" in r.stderr
    r = run_cli("prepare", "--params", "typo.yaml")
    assert "typo.yaml: train.epoch: unknown key" in r.stderr
    assert "typo.yaml: train.lr: must be a finite number" in r.stderr
    r = run_cli("prepare", "--params", "nobase.yaml")
    assert r.exit_code == 2 and "missing.yaml: params file not found" in r.stderr


def test_use_writes_a_config_into_params_yaml_keeping_comments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    shutil.copytree(ROOT / "experiments", "experiments")
    before = Path("params.yaml").read_text()
    r = run_cli("use", "experiments/voc07_resnet34.yaml")
    assert r.exit_code == 0, r.stderr
    after = Path("params.yaml").read_text()
    assert load_params("params.yaml") == load_params("experiments/voc07_resnet34.yaml")
    assert after.count("#") == before.count("#")   # every comment kept
    assert "backbone: resnet34" in after and "format: voc" in after


def _small(config: Path, data_root: Path, out: Path) -> Path:
    """An overlay of `config` that runs on the shipped VOC photos for seconds: 1 epoch, random weights,
    float32 on the CPU, no tracking. Model and resolution stay the config's."""
    overlay = {"base": str(config), "data": {"root": str(data_root), "num_workers": 0},
               "model": {"weights": None},
               "train": {"epochs": 1, "batch_size": 2, "amp": "none", "device": "cpu", "warmup_epochs": 0.5},
               "eval": {"batch_size": 1}, "tracking": {"enabled": False}}
    out.write_text(yaml.safe_dump(overlay))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("config", VOC_CONFIGS, ids=lambda p: p.stem)
def test_config_runs_prepare_train_evaluate_on_real_voc_photos(config, tmp_path, voc_mini, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    shutil.copytree(ROOT / "experiments", "experiments")
    voc = shutil.copytree(voc_mini, tmp_path / "VOC2007")   # one training step of 2 images, 1 test image
    for split, n in (("trainval", 2), ("test", 1)):
        ids = (voc / "ImageSets/Main" / f"{split}.txt").read_text().split()[:n]
        (voc / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    small = _small(Path("experiments") / config.name, voc, tmp_path / "small.yaml")
    for stage in ("prepare", "train", "evaluate"):
        r = run_cli(stage, "--params", str(small))
        assert r.exit_code == 0, (stage, r.stderr)
    import json
    ev = json.loads(Path("metrics/eval.json").read_text())
    assert ev["num_images"] == 1 and 0 <= ev["AP50"] <= 1
    import torch
    ckpt = torch.load("models/model.pt", weights_only=True)
    wanted = load_params(config.relative_to(ROOT)).model
    for key in ("backbone", "fpn_channels", "head_convs", "max_size"):
        assert ckpt["model_config"][key] == getattr(wanted, key)
    assert list(ckpt["model_config"]["min_size"]) == list(wanted.min_size)


def test_imagenet_weights_offline_fail_in_one_line_saying_what_to_do(project, tmp_path):
    """No network (a proxy that refuses every connection): one line, naming the setting and the remedy.
    In a subprocess: urllib caches its first opener, proxies included, for the rest of a process."""
    p = yaml.safe_load(Path("params.yaml").read_text())
    p["model"]["weights"] = "imagenet"
    p["tracking"]["enabled"] = False
    Path("params.yaml").write_text(yaml.safe_dump(p))
    assert run_cli("prepare").exit_code == 0
    proxy = "http://127.0.0.1:9"
    env = {**os.environ, "HTTPS_PROXY": proxy, "https_proxy": proxy, "HTTP_PROXY": proxy, "http_proxy": proxy,
           "TORCH_HOME": str(tmp_path / "torch-home")}
    r = subprocess.run([sys.executable, "-m", "pipeline", "train"], cwd=project, env=env, capture_output=True,
                       text=True, timeout=600)
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "model.weights imagenet" in lines[0] and "path of that resnet18 state dict" in lines[0]


WALKTHROUGH = re.compile(r"<!-- voc07-walkthrough -->\s*```bash\n(.*?)```", re.S)


@pytest.mark.slow
def test_readme_voc07_walkthrough_runs_verbatim_up_to_the_real_data(tmp_path, voc_mini):
    """The README's VOC07 commands, in order, on a copy of the project; the VOC tars are made from the shipped
    photos (standing in for the downloads). `dvc repro` is where real VOC07 and a GPU are needed: the
    prepare stage runs here, the rest is checked with `dvc status`."""
    block = WALKTHROUGH.search((ROOT / "README.md").read_text()).group(1)
    commands = [line.split("  #")[0].strip() for line in block.splitlines()
                if line.strip() and not line.startswith("#")]
    assert commands[-1] == "dvc repro"
    repo = git_project(tmp_path / "repo", yaml.safe_load((ROOT / "params.yaml").read_text()))
    for name in ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"):
        with tarfile.open(repo / name, "w") as tar:
            tar.add(voc_mini.parent, arcname="VOCdevkit")
    env = {**os.environ, "NO_COLOR": "1"}
    for cmd in commands[:-1]:
        r = subprocess.run(cmd, shell=True, cwd=repo, capture_output=True, text=True, env=env)
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    assert load_params(repo / "params.yaml").data.root == "data/datasets/VOCdevkit/VOC2007"
    r = subprocess.run(["dvc", "repro", "prepare"], cwd=repo, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    import json
    summary = json.loads((repo / "data/prepared/summary.json").read_text())
    assert summary["images"] == {"train": 8, "val": 0, "test": 4} and len(summary["classes"]) == 20
    status = subprocess.run(["dvc", "status"], cwd=repo, capture_output=True, text=True, env=env).stdout
    assert "train:" in status and "prepare:" not in status


def test_tiny_params_fixture_is_the_real_params_shrunk():
    assert set(flatten(tiny_params())) == set(flatten(yaml.safe_load((ROOT / "params.yaml").read_text())))
