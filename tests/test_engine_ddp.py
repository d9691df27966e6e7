"""DDP: two processes with gloo on CPU train a few steps and end with identical weights.

BatchNorm running statistics stay per rank (DDP broadcasts rank 0's buffers before each forward and rank 0
writes the checkpoint), so the comparison is over the parameters."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data_root, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from fcos import FCOS
    from fcos import distributed as dist
    from fcos.data import VOCDataset, build_loader
    from fcos.engine import TrainConfig, fit

    device = dist.init_distributed()
    torch.manual_seed(0)
    model = FCOS(num_classes=6, fpn_channels=16, head_convs=1, gn_groups=8, min_size=64, max_size=96)
    ds = VOCDataset(data_root, "trainval", train=True)
    loader = build_loader(ds, 2, shuffle=True, seed=0, distributed=True)
    result = fit(model, loader, TrainConfig(epochs=1, optimizer="sgd", lr=0.01, warmup_epochs=0),
                 checkpoint_path=os.path.join(out_dir, "ck.pt"), classes=ds.classes, device=device)
    torch.save({"state": {k: v.detach() for k, v in model.named_parameters()}, "steps": result["steps"]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    from fcos.data import generate_shapes
    root = generate_shapes(tmp_path / "d", seed=2, num_trainval=8, num_test=1, image_size=96)
    mp.spawn(_worker, args=(2, _free_port(), str(root), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a["steps"] == b["steps"] == 2          # 8 images / 2 ranks / batch 2
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    torch.manual_seed(0)
    from fcos import FCOS
    init = dict(FCOS(num_classes=6, fpn_channels=16, head_convs=1, gn_groups=8, min_size=64,
                     max_size=96).named_parameters())
    assert not torch.equal(init["head.cls_logits.weight"], a["state"]["head.cls_logits.weight"])   # it trained
    assert (tmp_path / "ck.pt").is_file()          # written by rank 0 only


def _validating_worker(rank, world, port, data_root, out_dir):
    """Train 1 epoch on 2 ranks with validation (eval_every=1) on a 5-image val set, sharded: rank 0 keeps
    the validation metrics fit reported."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from fcos import FCOS
    from fcos import distributed as dist
    from fcos.callbacks import Callback
    from fcos.data import VOCDataset, build_loader, write_coco_gt
    from fcos.engine import TrainConfig, fit

    device = dist.init_distributed()
    torch.manual_seed(0)
    model = FCOS(num_classes=6, fpn_channels=16, head_convs=1, gn_groups=8, min_size=64, max_size=96, score_thresh=0.0)
    train = VOCDataset(data_root, "trainval", train=True)
    val = VOCDataset(data_root, "test")
    gt = write_coco_gt(val, os.path.join(out_dir, f"gt{rank}.json"))
    seen = {}

    class Keep(Callback):
        def on_eval_end(self, state, metrics):
            seen.update(metrics)

    fit(model, build_loader(train, 2, shuffle=True, seed=0, distributed=True),
        TrainConfig(epochs=1, optimizer="sgd", lr=0.01, warmup_epochs=0, eval_every=1),
        checkpoint_path=os.path.join(out_dir, "ck.pt"), classes=train.classes, callbacks=[Keep()],
        val_loader=build_loader(val, 2, shard=True), val_gt=gt, val_cat_ids=val.cat_ids, device=device)
    if rank == 0:
        torch.save({k: v for k, v in seen.items() if isinstance(v, (int, float))}, os.path.join(out_dir, "val.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_validation_scores_each_image_once_like_one_process(tmp_path):
    """The val AP that fit reports under DDP equals a single-process evaluation of the same weights (no image
    scored twice, no DistributedSampler padding: 5 images on 2 ranks)."""
    from fcos.checkpoint import load_model
    from fcos.data import VOCDataset, build_loader, generate_shapes, write_coco_gt
    from fcos.engine import evaluate

    root = generate_shapes(tmp_path / "d", seed=3, num_trainval=8, num_test=5, image_size=96)
    mp.spawn(_validating_worker, args=(2, _free_port(), str(root), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "val.pt", weights_only=True)
    model, _ = load_model(tmp_path / "ck.pt")
    val = VOCDataset(root, "test")
    single = evaluate(model, build_loader(val, 2), write_coco_gt(val, tmp_path / "gt.json"), val.cat_ids)
    assert ddp["num_images"] == single["num_images"] == 5
    assert len(single["detections"]) > 0
    for k in ("AP", "AP50", "AP75", "AR100"):
        assert ddp[k] == pytest.approx(single[k], abs=1e-9), k


@pytest.mark.slow
def test_evaluate_stage_under_torchrun_equals_one_process(project):
    import json
    import subprocess
    import sys

    from conftest import run_cli
    for stage in ("prepare", "train", "evaluate"):
        assert run_cli(stage).exit_code == 0
    single = json.loads((project / "metrics/eval.json").read_text())
    (project / "metrics/eval.json").unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={env['MASTER_PORT']}", "-m", "pipeline", "evaluate"],
                       cwd=project, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ddp = json.loads((project / "metrics/eval.json").read_text())
    assert ddp["num_images"] == single["num_images"] == 4
    assert {k: ddp[k] for k in ("AP", "AP50", "AR100", "per_class_AP50")} == \
        {k: single[k] for k in ("AP", "AP50", "AR100", "per_class_AP50")}
