"""Bad params files through the real CLI: wrong values and types, YAML errors, a params file or overlay base
that is a FIFO, a device, a folder or no params file, keys given twice, overlay chains (long, looping) and
`use` writing into an overlay. Each is a one-line error naming the file; nothing is read that should not be."""
import os

import pytest
import yaml
from conftest import run_cli, tiny_params
from test_reliability_inputs import one_line

pytestmark = pytest.mark.timeout(300)   # a hang guard (FIFOs): a regression fails instead of blocking the run


PARAM_CASES = [
    ("wrong-type", lambda p: p["train"].update(lr="fast"), "train.lr: must be a number"),
    ("negative-lr", lambda p: p["train"].update(lr=-0.1), "train.lr: must be > 0"),
    ("unknown-backbone", lambda p: p["model"].update(backbone="resnet9"), "unknown backbone 'resnet9'"),
    ("missing-section", lambda p: p.pop("eval"), "eval: missing"),
    ("unknown-key", lambda p: p["train"].update(lrr=0.1), "train.lrr: unknown key"),
    ("bool-for-int", lambda p: p["train"].update(epochs=True), "train.epochs: must be an integer"),
    ("bad-choice", lambda p: p["train"].update(optimizer="adam"), "train.optimizer: must be one of sgd, adamw"),
    ("gn-groups", lambda p: p["model"].update(gn_groups=5), "model.gn_groups: must divide"),
    ("bad-amp", lambda p: p["train"].update(amp="fp8"), "train.amp: must be one of none, auto, fp16, bf16"),
    ("bad-winograd", lambda p: p["eval"].update(winograd="yes"), "eval.winograd: must be auto, true or false"),
    ("missing-voc-folder", lambda p: p["data"].update(format="voc", root="nowhere"), "nowhere: not a VOC folder"),
]


@pytest.mark.parametrize("case,edit,message", PARAM_CASES, ids=[c[0] for c in PARAM_CASES])
def test_params_corpus(project, case, edit, message):
    p = tiny_params()
    edit(p)
    (project / "params.yaml").write_text(yaml.safe_dump(p))
    r = run_cli("prepare")
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert all(line.startswith("error: ") for line in r.stderr.strip().splitlines())


def test_yaml_syntax_error_and_missing_params_file(project):
    (project / "params.yaml").write_text("train: [unclosed\n")
    r = run_cli("prepare")
    assert r.exit_code == 2 and "params.yaml: not valid YAML" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("prepare", "--params", "absent.yaml")
    assert r.exit_code == 2 and "absent.yaml: params file not found" in r.stderr


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "folder"])
def test_params_or_base_at_a_fifo_device_or_folder_is_refused_without_reading(project, target):
    path = {"fifo": str(project / "fifo"), "/dev/zero": "/dev/zero", "folder": str(project)}[target]
    if target == "fifo":
        os.mkfifo(path)
    one_line(run_cli("prepare", "--params", path), "not a regular file" if target != "folder" else "is a folder")
    (project / "over.yaml").write_text(yaml.safe_dump({"base": path}))
    one_line(run_cli("prepare", "--params", "over.yaml"), "not a regular file" if target != "folder" else "is a folder")


def test_a_base_that_is_no_params_file_is_refused_without_echoing_it(project):
    secret = "".join(f"user{i}: $6$salt{i}$hashhashhash\n" for i in range(20))
    (project / "secret").write_text(secret)
    (project / "over.yaml").write_text(yaml.safe_dump({"base": "secret"}))
    r = run_cli("prepare", "--params", "over.yaml")
    one_line(r, "secret: not a params file (20 top-level keys are not sections of params.yaml)")
    assert "hash" not in r.stderr and "user1" not in r.stderr
    (project / "typo.yaml").write_text(yaml.safe_dump({"base": "params.yaml", "trian": {"lr": 0.1}}))
    one_line(run_cli("prepare", "--params", "typo.yaml"), "typo.yaml: trian: not a section of params.yaml")


def test_a_key_given_twice_is_refused_by_every_command(project):
    text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(text + "\ntrain:\n  lr: 0.5\n")
    one_line(run_cli("prepare"), "key 'train' given twice")
    (project / "cfg.yaml").write_text(yaml.safe_dump({"base": "params.yaml"}))
    one_line(run_cli("use", "cfg.yaml"), "key 'train' given twice")


def test_overlay_chains_long_and_looping(project):
    previous = "params.yaml"
    for i in range(10):                                   # ten overlays deep: fine
        (project / f"o{i}.yaml").write_text(yaml.safe_dump({"base": previous, "train": {"lr": 0.001 * (i + 1)}}))
        previous = f"o{i}.yaml"
    from pipeline.params import MAX_OVERLAYS, load_params
    assert load_params("o9.yaml").train.lr == pytest.approx(0.01)
    for i in range(10, MAX_OVERLAYS + 1):
        (project / f"o{i}.yaml").write_text(yaml.safe_dump({"base": f"o{i - 1}.yaml"}))
    one_line(run_cli("prepare", "--params", f"o{MAX_OVERLAYS}.yaml"), f"a chain of more than {MAX_OVERLAYS} overlays")
    (project / "a.yaml").write_text(yaml.safe_dump({"base": "b.yaml"}))
    (project / "b.yaml").write_text(yaml.safe_dump({"base": "a.yaml"}))
    one_line(run_cli("prepare", "--params", "a.yaml"), "includes itself")


def test_use_writes_into_an_overlay_params_file(project):
    (project / "mine.yaml").write_text("base: params.yaml  # my settings\ntrain:\n  lr: 0.001\n")
    (project / "cfg.yaml").write_text(yaml.safe_dump({"base": "params.yaml", "train": {"lr": 0.003, "epochs": 2}}))
    r = run_cli("use", "cfg.yaml", "--params", "mine.yaml")
    assert r.exit_code == 0, r.stderr
    from pipeline.params import load_params
    assert load_params("mine.yaml").train.lr == 0.003 and "# my settings" in (project / "mine.yaml").read_text()
