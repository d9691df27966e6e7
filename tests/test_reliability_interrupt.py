"""SIGKILL at several points of training, then resume: the same weights as a run never stopped (bit-exact
on CPU), and a killed checkpoint write never damages the last good checkpoint."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from fcos import FCOS
    from fcos.callbacks import Callback
    from fcos.data import VOCDataset, build_loader
    from fcos.engine import TrainConfig, fit, seed_everything

    data, ckpt, out, fault, resume = sys.argv[1:6]

    class Fault(Callback):
        def on_step_end(self, state, losses, lr):
            if fault == "mid-epoch" and state.epoch == 1 and state.step == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    if fault == "checkpoint-write":   # die halfway through writing the epoch-2 checkpoint
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("epoch") == 2:
                f.write(b"partial checkpoint bytes")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *a, **k)
        torch.save = dying_save

    seed_everything(0)
    model = FCOS(num_classes=6, fpn_channels=16, head_convs=1, gn_groups=8, min_size=(56, 64), max_size=96)
    ds = VOCDataset(data, "trainval", train=True)
    loader = build_loader(ds, 3, shuffle=True, seed=0)
    cfg = TrainConfig(epochs=3, optimizer="adamw", lr=0.002, warmup_epochs=1)
    fit(model, loader, cfg, checkpoint_path=ckpt, classes=ds.classes, callbacks=[Fault()], resume=resume == "1")
    torch.save(model.state_dict(), out)
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from fcos.data import generate_shapes
    return generate_shapes(tmp_path_factory.mktemp("d"), seed=4, num_trainval=9, num_test=1, image_size=96)


def train(tmp_path, data, ckpt, out, fault="none", resume=False):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(data), str(ckpt), str(out), fault, "1" if resume else "0"],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("ref")
    r = train(tmp, data, tmp / "ck.pt", tmp / "final.pt")
    assert r.returncode == 0, r.stderr
    return torch.load(tmp / "final.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("fault,epoch_on_disk", [("mid-epoch", 1), ("checkpoint-write", 1)])
def test_killed_training_resumes_to_identical_weights(tmp_path, data, reference, fault, epoch_on_disk):
    ckpt = tmp_path / "ck.pt"
    r = train(tmp_path, data, ckpt, tmp_path / "never.pt", fault=fault)
    assert r.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.pt").exists()
    assert torch.load(ckpt, weights_only=True)["epoch"] == epoch_on_disk   # the last good checkpoint survived
    r = train(tmp_path, data, ckpt, tmp_path / "final.pt", resume=True)
    assert r.returncode == 0, r.stderr
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    assert all(torch.equal(final[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_interrupted_dvc_repro_finishes_when_run_again(tmp_path, tracking_uri):
    """SIGINT (Ctrl-C) and SIGKILL of `dvc repro` while training is paused mid-run (at a step the test picks,
    so a fast machine cannot finish first); running it again completes."""
    from conftest import git_project, pause_env, tiny_params, wait_paused

    git_project(tmp_path, tiny_params(train={"epochs": 2}))   # 3 steps per epoch
    for sig, step in ((signal.SIGINT, 4), (signal.SIGKILL, 5)):
        env, release = pause_env(tmp_path, step)
        # SIGINT as in a terminal: a test run started in the background (`pytest &`) inherits SIGINT ignored,
        # and Python keeps it ignored, so Ctrl-C would never reach training
        p = subprocess.Popen(["dvc", "repro"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_paused(p, release)
        os.killpg(p.pid, sig)
        p.wait(timeout=60)
        assert p.returncode != 0 and not (tmp_path / "metrics/eval.json").exists()
        assert torch.load(tmp_path / "models/model.pt", weights_only=True)["epoch"] == 1
    r = subprocess.run(["dvc", "repro"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path / "metrics/eval.json").is_file() and (tmp_path / "plots/detections/mosaic.png").is_file()
    assert json.loads((tmp_path / "metrics/train.json").read_text())["epochs"] == 2
