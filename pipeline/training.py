"""Training as the train stage and every tuning trial run it: the prepared splits, the seeded model, the
loaders (sharded under DDP) and `fcos.engine.fit`."""
from __future__ import annotations

import random
from pathlib import Path

from fcos import FCOS
from fcos import distributed as dist
from fcos.callbacks import Callback

from .artifacts import load_dataset
from .errors import UserError
from .extra_callbacks import extra_callbacks
from .params import model_config, train_config
from .paths import PREPARED


def train(params: dict, checkpoint: Path, callbacks: list[Callback], device, *, resume: bool = False,
          eval_every: int | None = None, best: Path | None = None, train_fraction: float = 1.0) -> dict:
    """fit() on data/prepared/train.json, validating on val.json every `eval_every` epochs (default
    train.eval_every), with `callbacks` and those FCOS_EXP_CALLBACKS names (pipeline/extra_callbacks.py);
    `best`: where the best validated epoch's weights go (None: nowhere, as in tuning trials);
    `train_fraction` < 1 trains on that share of the training images, drawn with train.seed (the same
    images for every tuning trial). Returns fit's result plus "num_images" and "classes"."""
    from fcos.data import build_loader
    from fcos.engine import fit, seed_everything

    d, t = params["data"], params["train"]
    cfg = train_config(params)
    if eval_every is not None:
        cfg.eval_every = eval_every
    train_ds = load_dataset("train", train=True, use_difficult=d["train_difficult"])
    if len(train_ds) == 0:
        raise UserError(f"{PREPARED / 'train.json'}: no training images (check the train split and val_fraction)")
    if train_fraction < 1:
        keep = random.Random(t["seed"]).sample(range(len(train_ds)), max(1, round(train_fraction * len(train_ds))))
        train_ds.records = [train_ds.records[i] for i in sorted(keep)]
    val_ds = val_loader = None
    if cfg.eval_every:
        val_ds = load_dataset("val")
        if len(val_ds) == 0:
            raise UserError(f"{PREPARED / 'val.json'}: no validation images, but validation is asked for "
                            "(train.eval_every or tuning): set data.val_fraction > 0 and run `fcos-exp prepare`")
        if not any(len(r.boxes) for r in val_ds.records):
            raise UserError(f"{PREPARED / 'val.json'}: none of the {len(val_ds)} validation images has a box, so "
                            "validation AP is undefined: hold out more images (data.val_fraction) and run "
                            "`fcos-exp prepare`")
        val_loader = build_loader(val_ds, params["eval"]["batch_size"], num_workers=d["num_workers"], shard=True)
    seed_everything(t["seed"])   # the initial weights too come from the seed
    model = FCOS(model_config(params, len(train_ds.classes)))
    loader = build_loader(train_ds, t["batch_size"], shuffle=True, num_workers=d["num_workers"], seed=t["seed"],
                          distributed=dist.is_distributed())
    result = fit(model, loader, cfg, checkpoint_path=checkpoint, classes=train_ds.classes,
                 callbacks=[*callbacks, *extra_callbacks()],
                 val_loader=val_loader, val_gt=val_ds and PREPARED / "val.json",
                 val_cat_ids=val_ds and val_ds.cat_ids, resume=resume, device=device, best_path=best)
    return {**result, "num_images": len(train_ds), "classes": train_ds.classes}
