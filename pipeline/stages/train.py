"""Stage train: fit the detector on data/prepared/train.json; writes models/model.pt (the last epoch),
models/best.pt (the best validated epoch), metrics/train.json and plots/train_steps.csv, tracked as one MLflow run."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

from fcos import FCOSConfig
from fcos import distributed as dist
from fcos.config import DECODE_KEYS

from ..artifacts import load_dataset, write_json
from ..errors import UserError
from ..params import device_of
from ..params_schema import flatten
from ..paths import BEST_MODEL, DATASET_PLOTS, MODEL, PREPARED, STEPS_CSV, TRAIN_LOCK, TRAIN_METRICS
from ..progress import ProgressCallback
from ..provenance import dataset_hash, git_commit
from ..steplog import StepLog
from ..tracking import MlflowCallback, Tracker
from ..training import train

if TYPE_CHECKING:
    from ..params_schema import Params


@contextmanager
def _only_training_here():
    """One `fcos-exp train` per folder: a second one stops at once instead of overwriting the first's
    checkpoint (the lock goes with the process, also when it is killed)."""
    TRAIN_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(TRAIN_LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{MODEL}: another `fcos-exp train` is running in this folder; wait for it "
                            "or stop it") from None
        yield


def _check_resumable(params: Params) -> int:
    """The checkpoint's global step, after checking it was trained with the same model and classes."""
    from fcos.checkpoint import load_checkpoint
    ckpt = load_checkpoint(MODEL)
    if "global_step" not in ckpt or "optimizer" not in ckpt:
        raise UserError(f"{MODEL}: holds weights but no training state to resume from; train without --resume")
    names = load_dataset("train").classes
    if list(ckpt["classes"]) != names:
        raise UserError(f"{MODEL}: trained on classes {ckpt['classes']}, but data/prepared has {names}; "
                        "train without --resume")
    saved = FCOSConfig.from_dict({**ckpt["model_config"], "weights": None})
    wanted = params.model_config(len(names))
    differ = [k for k, v in wanted.to_dict().items() if k not in (*DECODE_KEYS, "weights") and saved.to_dict()[k] != v]
    if differ:
        raise UserError(f"{MODEL}: trained with other model params ({', '.join(f'model.{k}' for k in differ)}); "
                        "train without --resume")
    return int(ckpt["global_step"])


def _patience_note(best: dict, patience: int, epochs: int) -> str:
    found = f"the best, {best['value']:.4f}, at epoch {best['epoch']} is in {BEST_MODEL}" if best["epoch"] else \
        f"no validation gave a {best['metric']} value"
    return (f"stopped early after epoch {epochs}: validation {best['metric']} has not improved for {patience} "
            f"validations (train.patience); {found}")


def run(params: Params, console, resume: bool = False) -> dict:
    import torch

    device = dist.init_distributed() if "RANK" in os.environ else device_of(params)
    main = dist.is_main_process()
    with _only_training_here() if main else nullcontext():
        resume = resume and MODEL.is_file()
        resume_step = _check_resumable(params) if resume else 0
        t = params.train
        tracking = params if main else replace(params, tracking=replace(params.tracking, enabled=False))
        with Tracker(tracking, new_run=not resume, system_metrics=True) as tracker:
            if not resume:
                tracker.log_params(params.flat())
                tracker.set_tags({"git_commit": git_commit(), "dataset_hash": dataset_hash(), "seed": t.seed,
                                  "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
                                  "backbone": params.model.backbone})
                tracker.log_dataset(f"{params.data.format}-prepared", dataset_hash(), str(PREPARED.resolve()))
                tracker.log_artifact(DATASET_PLOTS, "dataset")   # prepare's statistics of the data trained on
                tracker.log_artifact(PREPARED / "summary.json", "dataset")
            callbacks = [ProgressCallback(console, t.batch_size * dist.world_size()),
                         StepLog(STEPS_CSV, resume_step), MlflowCallback(tracker, params.tracking.log_every)]
            result = train(params, MODEL, callbacks if main else [], device, resume=resume, best=BEST_MODEL)
            history = result["history"]
            last = history[-1] if history else {}
            summary = {**{k: last.get(k) for k in ("final_loss", "cls_loss", "reg_loss", "ctr_loss")},
                       "epochs": result["epochs"], "steps": result["steps"],
                       "train_seconds": sum(h["seconds"] for h in history),
                       "images_per_second": sum(h["images_per_second"] for h in history) / max(1, len(history)),
                       "num_images": result["num_images"], "stopped_early": result["stopped_early"]}
            best = result["best"]
            if best["epoch"] is not None:   # absent without a validation value: numbers are honest or absent
                summary.update(best_metric=best["metric"], best_epoch=best["epoch"], best_value=best["value"])
            if main:
                if result["stopped_by"] == "patience":
                    console.print(_patience_note(best, t.patience, result["epochs"]))
                if t.amp == "auto":
                    console.print(f"train.amp auto: trained with {result['amp']}")
                tracker.set_tags({"amp": result["amp"]})   # as it ran (train.amp auto resolved)
                write_json(TRAIN_METRICS, summary)
                tracker.log_metrics({f"train_summary/{k}": v for k, v in summary.items()
                                     if k not in ("stopped_early", "best_metric")})
                if best["epoch"] is not None:
                    tracker.log_metrics({"best_epoch": best["epoch"], f"best_val_{best['metric']}": best["value"]})
                tracker.log_model(MODEL, "fcos", {**flatten({"model": asdict(params.model)}),
                                                  "classes": ",".join(result["classes"])})
                tracker.log_artifact(TRAIN_METRICS, "metrics")
    if dist.is_distributed():
        torch.distributed.destroy_process_group()
    return summary
