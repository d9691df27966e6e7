"""Stage train: fit the detector on data/prepared/train.json; writes models/model.pt and metrics/train.json."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import UserError
from ..figures_dataset import DATASET_PLOTS
from ..params import device_of, flatten, model_config, train_config
from ..progress import ProgressCallback, StepLog
from ..tracking import MlflowCallback, Tracker, dataset_hash, git_commit
from .prepare import PREPARED

MODEL = Path("models/model.pt")
TRAIN_METRICS = Path("metrics/train.json")
STEPS_CSV = Path("plots/train_steps.csv")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _dataset(name: str, **kwargs):
    from fcos.data import CocoDataset
    path = PREPARED / f"{name}.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; run `fcos-exp prepare` (or `dvc repro`) first")
    return CocoDataset(path, **kwargs)


def run(params: dict, console, resume: bool = False) -> dict:
    import torch

    from fcos import FCOS
    from fcos import distributed as dist
    from fcos.checkpoint import load_checkpoint
    from fcos.data import build_loader
    from fcos.engine import fit, seed_everything

    device = dist.init_distributed() if "RANK" in os.environ else device_of(params)
    d, t = params["data"], params["train"]
    train_ds = _dataset("train", train=True, use_difficult=d["train_difficult"])
    seed_everything(t["seed"])   # the initial weights too come from the seed
    model = FCOS.from_config(model_config(params, len(train_ds.classes)))
    loader = build_loader(train_ds, t["batch_size"], shuffle=True, num_workers=d["num_workers"], seed=t["seed"],
                          distributed=dist.is_distributed())
    val_loader = val_ds = None
    if t["eval_every"]:
        val_ds = _dataset("val")
        val_loader = build_loader(val_ds, params["eval"]["batch_size"], num_workers=d["num_workers"])
    resume = resume and MODEL.is_file()
    resume_step = load_checkpoint(MODEL)["global_step"] if resume else 0
    main = dist.is_main_process()
    with Tracker(params if main else {**params, "tracking": {**params["tracking"], "enabled": False}},
                 new_run=not resume) as tracker:
        if not resume:
            tracker.log_params(flatten(params))
            tracker.set_tags({"git_commit": git_commit(), "dataset_hash": dataset_hash(), "seed": t["seed"],
                              "dvc_exp": os.environ.get("DVC_EXP_NAME", ""), "backbone": params["model"]["backbone"]})
            tracker.log_artifact(DATASET_PLOTS, "dataset")   # prepare's statistics of the data trained on
            tracker.log_artifact(PREPARED / "summary.json", "dataset")
        callbacks = [ProgressCallback(console, t["batch_size"] * dist.world_size()), StepLog(STEPS_CSV, resume_step),
                     MlflowCallback(tracker, params["tracking"]["log_every"])]
        result = fit(model, loader, train_config(params), checkpoint_path=MODEL, classes=train_ds.classes,
                     callbacks=callbacks if main else [], val_loader=val_loader, val_gt=val_ds and PREPARED / "val.json",
                     val_cat_ids=val_ds and val_ds.cat_ids, resume=resume, device=device)
        history = result["history"]
        last = history[-1] if history else {}
        summary = {**{k: last.get(k) for k in ("final_loss", "cls_loss", "reg_loss", "ctr_loss")},
                   "epochs": result["epochs"], "steps": result["steps"],
                   "train_seconds": sum(h["seconds"] for h in history),
                   "images_per_second": sum(h["images_per_second"] for h in history) / max(1, len(history)),
                   "num_images": len(train_ds), "stopped_early": result["stopped_early"]}
        if main:
            write_json(TRAIN_METRICS, summary)
            tracker.log_metrics({f"train_summary/{k}": v for k, v in summary.items() if k != "stopped_early"})
            tracker.log_artifact(MODEL, "model")
            tracker.log_artifact(TRAIN_METRICS, "metrics")
    if dist.is_distributed():
        torch.distributed.destroy_process_group()
    return summary
