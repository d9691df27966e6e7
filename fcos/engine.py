"""The training and evaluation loops: `train_one_epoch`, `predict_loader`, `evaluate`, `fit`.

The model only has to follow the loss-dict contract (train mode: `model(images, targets)` -> dict of
scalar losses with "final_loss"; eval mode: `model(images)` -> list of {"boxes", "scores", "labels"}). The
images reach it on the device, the targets stay on the host (FCOS checks and pads them there and sends them
in one copy that does not wait for the GPU). Progress leaves through `fcos.callbacks.Callback`.
"""
from __future__ import annotations

import functools
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed as dist
from .callbacks import Callback, CallbackList, StopTraining, TrainState
from .checkpoint import best_mismatch, load_checkpoint, save_checkpoint, weights_checkpoint
from .coco_eval import coco_evaluate
from .config import TrainConfig
from .errors import InputError
from .optim import build_optimizer, build_scheduler
from .winograd import cpu_info
from .winograd_train import training as winograd_training


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_gauss": random.getstate()[2], "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast_for(device: torch.device, amp: str) -> Callable[[], torch.autocast]:
    """A maker of the autocast context of `amp` on `device`, built once per loop ("auto" resolved and the
    emulation warning given here, not every step): fp16 or bf16 on CUDA; bf16 on CPU too (about 2x faster on
    CPUs with AVX512-BF16 or AMX)."""
    amp = resolve_amp(amp, device)
    if amp == "bf16" and device.type == "cpu" and not _cpu_has_bf16():
        warnings.warn("amp bf16 on a CPU without native bfloat16 (AVX512-BF16 or AMX) is emulated and about 10x "
                      "slower than float32: set train.amp to none", stacklevel=2)
    enabled = amp == "bf16" or (device.type == "cuda" and amp == "fp16")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=enabled)


@functools.cache
def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX). oneDNN's own query says yes for any
    AVX512BW CPU, where bf16 is only converted to float32 around float32 arithmetic; it answers only where
    /proc/cpuinfo lists no x86 flags (another OS, ARM)."""
    flags = set(cpu_info()[1])
    if "avx2" in flags:   # x86 with flags listed
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):   # a private oneDNN query: assume support if it is gone
        return True


@functools.cache
def resolve_amp(amp: str, device: torch.device) -> str:
    """`amp` as it runs on `device`: "auto" is bf16 where the device computes it natively (a CUDA GPU with
    bf16, a CPU with AVX512-BF16 or AMX), fp16 on other CUDA GPUs (with the GradScaler), else none; fp16
    elsewhere than on CUDA runs float32 (autocast_for leaves it off, so a CUDA config runs anywhere): none;
    any other value as given."""
    if amp == "fp16" and device.type != "cuda":
        return "none"
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if device.type == "cpu" and _cpu_has_bf16() else "none"


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" is CUDA when there is a GPU, else the CPU; anything else as torch.device reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _to_device(images: list, device: torch.device) -> list:
    """Images to the device; asynchronous from the loader's pinned memory."""
    return [im.to(device, non_blocking=True) for im in images]


def _nonfinite_error(epoch: int, step: int, values: dict[str, float]) -> FloatingPointError:
    return FloatingPointError(f"loss became {values['final_loss']} at epoch {epoch + 1}, step {step + 1} ({values}); "
                              "lower train.lr or raise warmup, or set train.nonfinite: skip")


def _report(pending: list, names: list[str], state: TrainState, callbacks: Callback, nonfinite: str) -> None:
    """Hand the steps in `pending` (step, global step, lr, losses [K] on the device) to the callbacks, the
    losses read by the host in one transfer; a non-finite loss stops training naming its step."""
    if not pending:
        return
    rows = torch.stack([p[3] for p in pending]).tolist()
    now = state.step, state.global_step
    try:
        for (step, global_step, lr, _), row in zip(pending, rows, strict=True):
            values = dict(zip(names, row, strict=True))
            if nonfinite != "skip" and not math.isfinite(values["final_loss"]):
                raise _nonfinite_error(state.epoch, step, values)
            state.step, state.global_step = step, global_step
            callbacks.on_step_end(state, values, lr)
    finally:
        state.step, state.global_step = now
        pending.clear()


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, scaler, device: torch.device,
                    cfg: TrainConfig, state: TrainState, callbacks: Callback) -> dict[str, float]:
    """One pass over `loader`; returns mean losses, seconds, images/s and skipped steps.

    Reading a CUDA tensor on the host waits for every kernel queued before it, so on CUDA the step reads
    nothing: the losses stay on the device (epoch sums too) and the host reads them every `cfg.sync_every`
    steps (10 by default) and at the end of the epoch, in one transfer; only then do the callbacks get them,
    one call per step as before, and does a non-finite loss stop training, naming its step (`nonfinite:
    stop`; the steps between it and the read ran on NaN weights, and no checkpoint is written from them).
    On the CPU, where a read costs nothing, and with `nonfinite: skip`, which must know before the update,
    the loss is read every step before the backward pass. On the CPU in float32, 3x3 convolutions run as
    Winograd where `cfg.winograd` and timing on this machine pick it (fcos/winograd_train.py)."""
    model.train()
    every = cfg.sync_every or (10 if device.type == "cuda" else 1)
    lazy = every > 1 and cfg.nonfinite != "skip"
    pending: list = []
    names: list[str] = []
    sums = None                      # float64 on the device: the same additions as Python floats
    n_images = skipped = 0
    data_seconds = 0.0
    autocast = autocast_for(device, cfg.amp)
    start = last = time.perf_counter()
    for step, (images, targets) in enumerate(loader):
        data_seconds += time.perf_counter() - last
        state.step = step
        with autocast(), winograd_training(cfg.winograd):   # the backward runs what the forward chose
            losses = model(_to_device(images, device), targets)
        names = list(losses)
        values = torch.stack([v.detach().double() for v in losses.values()])
        optimizer.zero_grad(set_to_none=True)
        if not lazy and not math.isfinite(losses["final_loss"].detach()):
            if cfg.nonfinite != "skip":
                raise _nonfinite_error(state.epoch, step, dict(zip(names, values.tolist(), strict=True)))
            skipped += 1
        else:
            scaler.scale(losses["final_loss"]).backward()
            if cfg.clip_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            sums = values if sums is None else sums + values
        scheduler.step()
        n_images += len(images)
        state.global_step += 1
        pending.append((step, state.global_step, optimizer.param_groups[0]["lr"], values))
        if len(pending) >= every:
            _report(pending, names, state, callbacks, cfg.nonfinite)
        last = time.perf_counter()
    _report(pending, names, state, callbacks, cfg.nonfinite)
    seconds = time.perf_counter() - start
    done = max(1, state.steps_per_epoch - skipped)
    summary = dict(zip(names, (sums / done).tolist(), strict=True)) if sums is not None else {}
    summary = dist.mean_across_ranks(summary, device)
    return {**summary, "seconds": seconds, "data_seconds": data_seconds,
            "images_per_second": n_images * dist.world_size() / max(seconds, 1e-9), "skipped_steps": skipped}


@torch.inference_mode()
def predict_loader(model: nn.Module, loader, device: torch.device, amp: str = "none",
                   progress: Callable[[int, int], None] | None = None):
    """Detections of every image as a COCO results array [N, 7] (image_id, x, y, w, h, score, label),
    labels still contiguous, plus timings (model alone vs the whole loop)."""
    model.eval()
    rows, model_seconds, n = [], 0.0, 0
    autocast = autocast_for(device, amp)
    start = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        images = _to_device(images, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast():
            outputs = model(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_seconds += time.perf_counter() - t
        # One device -> host transfer per batch; float64: image ids such as 2007000027 exceed float32.
        det = torch.cat([torch.cat((o["boxes"], o["scores"][:, None], o["labels"][:, None]), 1) for o in outputs])
        det = det.double().cpu()
        ids = torch.tensor([float(t["image_id"]) for t in targets], dtype=torch.float64)
        ids = ids.repeat_interleave(torch.tensor([len(o["scores"]) for o in outputs]))
        rows.append(torch.cat((ids[:, None], det[:, :2], det[:, 2:4] - det[:, :2], det[:, 4:]), dim=1))
        n += len(images)
        if progress:
            progress(i + 1, len(loader))
    total = time.perf_counter() - start
    dets = torch.cat(rows).numpy() if rows else np.zeros((0, 7))
    return dets, {"inference_seconds": total, "model_seconds": model_seconds,
                  "data_seconds": max(0.0, total - model_seconds), "num_images": n}


def evaluate(model: nn.Module, loader, coco_gt, cat_ids: list[int], device: torch.device | str = "cpu",
             backend: str = "faster", amp: str = "none", progress=None) -> dict:
    """COCO metrics of `model` on `loader` (the 12 stats, per-class AP/AP50) with timings kept apart:
    inference_seconds (whole loop), model_seconds, data_seconds, metric_seconds, ms_per_image; "amp" as it ran
    (`resolve_amp`)."""
    device = resolve_device(device)
    amp = resolve_amp(amp, device)
    dets, timing = predict_loader(model, loader, device, amp, progress)
    if dist.is_distributed():   # every rank saw its own shard (build_loader(shard=True)): gather them all
        gathered = [None] * dist.world_size()
        torch.distributed.all_gather_object(gathered, (dets, timing["num_images"]))
        dets = np.concatenate([d for d, _ in gathered])
        timing["num_images"] = sum(n for _, n in gathered)
    if len(dets):
        dets[:, 6] = np.asarray(cat_ids)[dets[:, 6].astype(np.int64)]
    t = time.perf_counter()
    metrics = coco_evaluate(coco_gt, dets, backend)
    metric_seconds = time.perf_counter() - t
    n = max(1, timing["num_images"])
    return {**metrics, **timing, "metric_seconds": metric_seconds, "ms_per_image": 1000 * timing["model_seconds"] / n,
            "amp": amp, "detections": dets}


def _improves(value: float | None, best: float | None) -> bool:
    """Higher is better (every COCO stat); only a strictly higher value improves, so a tie keeps the earlier
    epoch; an undefined value (None: the validation split has no object of that kind) never improves."""
    return value is not None and (best is None or value > best)


def _resumed_best(ckpt: dict, cfg: TrainConfig, path: Path) -> dict:
    """The best-so-far record a checkpoint holds (a fresh one from a checkpoint written before it existed)."""
    best = dict(ckpt.get("best") or _new_best(cfg))
    if best["metric"] != cfg.best_metric:
        raise InputError(f"{path}: its best epoch is chosen by validation {best['metric']}, not {cfg.best_metric}: "
                         f"resume with best_metric {best['metric']}, or train from the start")
    return best


def _new_best(cfg: TrainConfig) -> dict:
    # value and epoch (1-based) of the best validation so far; stale: validations since then (the patience count)
    return {"metric": cfg.best_metric, "value": None, "epoch": None, "stale": 0}


def _restore_best_file(best_path: Path, best: dict, model, classes, ckpt: dict, checkpoint_path: Path) -> None:
    """On resume: the best checkpoint must hold the best epoch the last checkpoint records. The last
    checkpoint is written first, so a kill (or a full disk) between the two writes leaves the best epoch = the
    last one, whose weights are at hand: they are written again, always (a best checkpoint of an earlier
    training can carry the same record, epoch 1 with AP 0 say); any other mismatch cannot be repaired."""
    if best["epoch"] != ckpt["epoch"]:
        try:
            on_disk = load_checkpoint(best_path)
        except (FileNotFoundError, InputError):
            on_disk = {}
        if best_mismatch(on_disk, ckpt) is None:
            return
        raise InputError(f"{best_path}: does not hold epoch {best['epoch']}, the best one {checkpoint_path} records, "
                         "and cannot be rebuilt: train from the start")
    save_checkpoint(best_path, weights_checkpoint(model, classes, epoch=ckpt["epoch"], global_step=ckpt["global_step"],
                                                  best=best, train_config=ckpt["train_config"]))


def fit(model: nn.Module, train_loader, cfg: TrainConfig, *, checkpoint_path: str | Path,
        classes: list[str], callbacks: list[Callback] = (), val_loader=None, val_gt=None,
        val_cat_ids: list[int] | None = None, resume: bool = False, device: str | torch.device = "cpu",
        best_path: str | Path | None = None) -> dict:
    """Train for cfg.epochs on `device` ("auto": CUDA when there is a GPU), checkpointing every epoch (atomic)
    and resuming exactly from the last one, on this device or another.

    With validation (cfg.eval_every and a val_loader), the epoch with the highest validation cfg.best_metric
    (the first of equal ones) is the best: its weights go to `best_path` (if given) when it is validated, and
    cfg.patience validations without a higher value stop training. The last checkpoint holds the `best` record
    (metric, value, epoch, stale: validations since), so a resumed run makes the same decisions. Without a
    validation value, `best_path` gets the weights training ended with, its record's epoch and value None.

    Returns {"epochs", "steps", "train_seconds", "history": [per-epoch summaries], "stopped_early", "stopped_by"
    (None, "callback": a StopTraining, or "patience"), "best" (the record), "amp" (cfg.amp resolved: none,
    fp16 or bf16)}."""
    device = resolve_device(device)
    amp = resolve_amp(cfg.amp, device)
    main = dist.is_main_process()
    cbs = CallbackList(callbacks if main else [])
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = model
    if dist.is_distributed() and cfg.sync_bn:
        train_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)   # converts the modules in place
    if dist.is_distributed():
        # No device_ids: DDP would then copy every input to the GPU, the host-side targets one tensor at a time.
        train_model = nn.parallel.DistributedDataParallel(model)
    steps = len(train_loader)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.epochs * steps, round(cfg.warmup_epochs * steps), cfg.scheduler,
                                cfg.milestones, cfg.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and amp == "fp16")
    state = TrainState(epochs=cfg.epochs, steps_per_epoch=steps)
    history: list[dict] = []
    checkpoint_path = Path(checkpoint_path)
    best_path = Path(best_path) if best_path is not None else None
    best = _new_best(cfg)
    if resume and checkpoint_path.is_file():
        ckpt = load_checkpoint(checkpoint_path)   # on the CPU: RNG states must stay there; the rest is copied
        best = _resumed_best(ckpt, cfg, checkpoint_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        if getattr(train_loader, "generator", None) is not None and "loader_rng" in ckpt:
            train_loader.generator.set_state(ckpt["loader_rng"])
        state.epoch, state.global_step, history = ckpt["epoch"], ckpt["global_step"], list(ckpt["history"])
        if main and best_path is not None and best["epoch"] is not None:
            _restore_best_file(best_path, best, model, classes, ckpt, checkpoint_path)
    else:
        seed_everything(cfg.seed)
    start_epoch, error, stopped_by = state.epoch, None, None
    start = time.perf_counter()
    cbs.on_train_start(state)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if cfg.patience and best["stale"] >= cfg.patience:   # checked here: a resumed run that had stopped too
                stopped_by = "patience"
                break
            state.epoch = epoch
            if hasattr(train_loader.sampler, "set_epoch"):
                train_loader.sampler.set_epoch(epoch)
            summary = train_one_epoch(train_model, train_loader, optimizer, scheduler, scaler, device, cfg, state, cbs)
            summary["epoch"] = epoch + 1
            metrics, improved = None, False
            if cfg.eval_every and val_loader is not None and (epoch + 1) % cfg.eval_every == 0:
                metrics = evaluate(model, val_loader, val_gt, val_cat_ids, device, cfg.eval_backend, amp)
                summary.update({f"val_{k}": v for k, v in metrics.items() if isinstance(v, float)})
                improved = _improves(metrics[cfg.best_metric], best["value"])
                best = {**best, "value": metrics[cfg.best_metric], "epoch": epoch + 1, "stale": 0} if improved \
                    else {**best, "stale": best["stale"] + 1}
            history.append(summary)
            if main:   # the last checkpoint first: see _restore_best_file
                save_checkpoint(checkpoint_path, {
                    **weights_checkpoint(model, classes, epoch=epoch + 1, global_step=state.global_step, best=best,
                                         train_config=asdict(cfg)),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "rng": _rng_state(), "loader_rng": train_loader.generator.get_state()
                    if getattr(train_loader, "generator", None) is not None else None, "history": history})
                if improved and best_path is not None:
                    save_checkpoint(best_path, weights_checkpoint(model, classes, epoch=epoch + 1, best=best,
                                                                  global_step=state.global_step,
                                                                  train_config=asdict(cfg)))
            if metrics is not None:
                cbs.on_eval_end(state, {k: v for k, v in metrics.items() if k != "detections"})
            cbs.on_epoch_end(state, summary)
    except StopTraining:
        stopped_by = "callback"
    except BaseException as e:
        error = e
        raise
    finally:
        cbs.on_train_end(state, error)
    if main and best_path is not None and best["epoch"] is None:
        # No validation value (eval_every 0, or none came): best_path still exists for whoever reads it (a DVC
        # output must), holding the weights training ended with; its record (epoch None) says so.
        save_checkpoint(best_path, weights_checkpoint(model, classes, epoch=history[-1]["epoch"] if history else 0,
                                                      global_step=state.global_step, best=best,
                                                      train_config=asdict(cfg)))
    return {"epochs": len(history), "steps": state.global_step, "history": history,
            "stopped_early": stopped_by is not None, "stopped_by": stopped_by, "best": best,
            "train_seconds": time.perf_counter() - start, "amp": amp}
