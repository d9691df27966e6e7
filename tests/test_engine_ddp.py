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
    torch.save({"state": {k: v.detach() for k, v in model.named_parameters()}, "steps": result["steps"]}, os.path.join(out_dir, f"rank{rank}.pt"))
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
    init = dict(FCOS(num_classes=6, fpn_channels=16, head_convs=1, gn_groups=8, min_size=64, max_size=96).named_parameters())
    assert not torch.equal(init["head.cls_logits.weight"], a["state"]["head.cls_logits.weight"])   # it trained
    assert (tmp_path / "ck.pt").is_file()          # written by rank 0 only
