"""On a CUDA GPU (skipped elsewhere; benchmarks/gpu_check.sh runs them on one): fp16/bf16 training with
GradScaler, channels_last, a training step that never waits for the GPU, the inference copy, checkpoints
moved between CUDA and CPU, device auto, the pipeline stages, and torchrun over NCCL."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT, run_cli, tiny_params

from fcos import FCOS
from fcos.callbacks import Callback
from fcos.checkpoint import load_checkpoint, load_model
from fcos.data import VOCDataset, build_loader, collate, generate_shapes, write_coco_gt
from fcos.engine import TrainConfig, evaluate, fit, resolve_amp
from fcos.inference import for_inference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                   reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these)")]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes"), seed=1, num_trainval=8, num_test=4, image_size=128)


@pytest.fixture
def no_tf32(monkeypatch):
    """cuDNN convolutions in TF32 (its default on Ampere and later) round to ~1e-3: compare in float32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def small_model():
    return FCOS(num_classes=6, fpn_channels=32, head_convs=1, gn_groups=8, min_size=128, max_size=160)


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_step_end(self, state, losses, lr):
        self.values.append(losses["final_loss"])


@pytest.mark.parametrize("amp,channels_last,steps", [("fp16", False, 300), ("bf16", False, 300), ("fp16", True, 150)])
def test_mixed_precision_training_learns_a_small_batch(shapes, tmp_path, amp, channels_last, steps):
    ds = VOCDataset(shapes, "trainval", train=True)
    loader = build_loader([ds[i] for i in range(4)] * steps, 4)   # the same 4 images, `steps` times
    torch.manual_seed(0)
    model, rec = small_model(), Losses()
    cfg = TrainConfig(epochs=1, optimizer="adamw", lr=1e-3, warmup_epochs=0.05, amp=amp, channels_last=channels_last)
    fit(model, loader, cfg, checkpoint_path=tmp_path / "ck.pt", classes=ds.classes, callbacks=[rec], device="cuda")
    losses = rec.values
    assert len(losses) == steps and all(math.isfinite(v) for v in losses)
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20]), (losses[:20], losses[-20:])
    scaler = load_checkpoint(tmp_path / "ck.pt")["scaler"]
    if amp == "fp16":   # scaling on, and the last steps were applied (not skipped for inf gradients)
        assert 0 < scaler["scale"] <= 2.0 ** 16 and scaler["_growth_tracker"] > 0
    else:
        assert scaler is None
    conv = model.backbone.body.conv1.weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_amp_auto_is_bf16_where_the_gpu_runs_it_else_fp16_with_the_scaler(shapes, tmp_path):
    ds = VOCDataset(shapes, "trainval", train=True)
    cfg = TrainConfig(epochs=1, lr=0.01, amp="auto")
    result = fit(small_model(), build_loader(ds, 4), cfg, checkpoint_path=tmp_path / "ck.pt", classes=ds.classes,
                 device="cuda")
    wanted = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    assert result["amp"] == wanted == resolve_amp("auto", torch.device("cuda"))
    assert (load_checkpoint(tmp_path / "ck.pt")["scaler"] is not None) == (wanted == "fp16")
    assert all(math.isfinite(h["final_loss"]) for h in result["history"])


class SyncChecked:
    """Batches for fit; from the second step on (the first creates optimizer state), CUDA raises on any
    operation that makes the host wait for the GPU."""
    sampler = None

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            torch.cuda.set_sync_debug_mode("error" if i else "default")
            yield batch
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_training_steps_never_wait_for_the_gpu(shapes, tmp_path, amp):
    ds = VOCDataset(shapes, "trainval", train=True)
    images, targets = collate([ds[i] for i in range(4)])
    batches = [([im.pin_memory() for im in images], targets)] * 6
    rec = Losses()
    try:
        fit(small_model(), SyncChecked(batches), TrainConfig(epochs=1, lr=0.01, amp=amp, sync_every=100),
            checkpoint_path=tmp_path / "ck.pt", classes=ds.classes, callbacks=[rec], device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(rec.values) == 6 and all(math.isfinite(v) for v in rec.values)


def test_pinned_batches_from_workers_equal_those_loaded_here(shapes):
    """Batches leave loader workers packed (fcos.data.loader.Packed): pinned, they are the same tensors."""
    ds = VOCDataset(shapes, "trainval", train=True)
    ds.flip_prob = 0.0
    here, sent = list(build_loader(ds, 4, num_workers=0)), list(build_loader(ds, 4, num_workers=2))
    assert len(here) == len(sent) == 2
    for (images, targets), (images_w, targets_w) in zip(here, sent, strict=True):
        for a, b in zip(images, images_w, strict=True):
            assert b.is_pinned() and torch.equal(a, b) and a.stride() == b.stride()
            assert torch.equal(b.to("cuda", non_blocking=True).cpu(), a)
        for a, b in zip(targets, targets_w, strict=True):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])


def _close(got, want, box_atol):
    for w, h in zip(want, got, strict=True):
        assert len(w["scores"]) > 0
        torch.testing.assert_close(h["scores"][:20].cpu(), w["scores"][:20].cpu(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(h["boxes"][:5].cpu(), w["boxes"][:5].cpu(), rtol=1e-4, atol=box_atol)


def test_inference_copy_on_cuda_gives_the_eager_detections(no_tf32):
    from test_model_inference import trained_stats_model
    images = [torch.rand(3, 96, 128), torch.rand(3, 110, 90)]
    with torch.no_grad():
        on_cpu = trained_stats_model()(images)
        model = trained_stats_model().cuda()
        gpu_images = [im.cuda() for im in images]
        eager, fast = model(gpu_images), for_inference(model)(gpu_images)
        with torch.autocast("cuda", dtype=torch.float16):
            eager16, fast16 = model(gpu_images), for_inference(model)(gpu_images)
    _close(fast, eager, 1e-3)
    _close(eager, on_cpu, 1e-3)
    for w, h in zip(eager16, fast16, strict=True):   # fp16 rounds differently with and without the folded BatchNorm
        torch.testing.assert_close(h["scores"][:20], w["scores"][:20], rtol=0, atol=5e-3)


def test_checkpoints_move_between_cuda_and_cpu(shapes, tmp_path, no_tf32):
    ds, test = VOCDataset(shapes, "trainval", train=True), VOCDataset(shapes, "test")
    gt = write_coco_gt(test, tmp_path / "gt.json")
    image = [test[0][0]]
    for written_on, read_on in (("cuda", "cpu"), ("cpu", "cuda")):
        path = tmp_path / f"{written_on}.pt"
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=1, lr=0.01, amp="fp16" if written_on == "cuda" else "none")
        fit(small_model(), build_loader(ds, 4, shuffle=True), cfg, checkpoint_path=path, classes=ds.classes,
            device=written_on)
        code = f"import torch; print(torch.load({str(path)!r}, weights_only=True)['model']['head.scales'].device)"
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.split() == ["cpu"], out.stderr   # plain torch.load, no GPU
        with torch.no_grad():
            dets = {d: load_model(path, d)[0](image if d == "cpu" else [image[0].cuda()])[0] for d in ("cpu", "cuda")}
        torch.testing.assert_close(dets["cuda"]["scores"][:10].cpu(), dets["cpu"]["scores"][:10], rtol=1e-3, atol=1e-4)
        model, classes = load_model(path, read_on)
        m = evaluate(model, build_loader(test, 2), gt, test.cat_ids, read_on)
        assert m["num_images"] == len(test) and classes == ds.classes and 0 <= m["AP50"] <= 1
        resumed = fit(small_model(), build_loader(ds, 4, shuffle=True), TrainConfig(epochs=2, lr=0.01),
                      checkpoint_path=path, classes=ds.classes, resume=True, device=read_on)
        assert resumed["epochs"] == 2 and resumed["steps"] == 4 and load_checkpoint(path)["epoch"] == 2


def test_fit_with_device_auto_trains_on_cuda(shapes, tmp_path):
    ds = VOCDataset(shapes, "trainval", train=True)
    model = small_model()
    fit(model, build_loader(ds, 4), TrainConfig(epochs=1, lr=0.01), checkpoint_path=tmp_path / "ck.pt",
        classes=ds.classes, device="auto")
    assert next(model.parameters()).is_cuda


def _params(project, **train):
    p = tiny_params(train={"device": "auto", **train}, tracking={"enabled": False})   # no MLflow on the GPU path
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def test_pipeline_stages_run_on_cuda(project):
    _params(project, amp="fp16", channels_last=True)
    torch.cuda.reset_peak_memory_stats()
    for stage in ("prepare", "train", "evaluate", "visualize"):
        r = run_cli(stage)
        assert r.exit_code == 0, (stage, r.stdout, r.stderr)
    assert torch.cuda.max_memory_allocated() > 1e6   # device auto put the work on the GPU
    tr = json.loads((project / "metrics/train.json").read_text())
    ev = json.loads((project / "metrics/eval.json").read_text())
    assert tr["epochs"] == 1 and tr["steps"] == 3 and math.isfinite(tr["final_loss"])
    assert ev["num_images"] == 4 and all(ev[k] is None or 0 <= ev[k] <= 1 for k in ("AP", "AP50", "AR100"))
    assert len(list((project / "plots/detections").glob("*.png"))) == 3
    out = project / "pred"
    r = run_cli("predict", str(project / "data/prepared/shapes/VOCdevkit/VOC2007/JPEGImages"), "--out", str(out),
                "--score-thresh", "0.0")
    assert r.exit_code == 0, r.stderr
    assert len(json.loads((out / "detections.json").read_text())) == 18


def test_torchrun_one_process_over_nccl(project):
    _params(project, amp="fp16")
    assert run_cli("prepare").exit_code == 0
    env = {**os.environ, "NCCL_DEBUG": "INFO",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                        "-m", "pipeline", "train"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "NCCL INFO" in r.stdout + r.stderr   # the process group really is NCCL
    tr = json.loads((project / "metrics/train.json").read_text())
    assert tr["epochs"] == 1 and tr["steps"] == 3 and (project / "models/model.pt").is_file()
