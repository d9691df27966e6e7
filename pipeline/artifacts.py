"""The files the stages share: where each lives, how it is written (atomically), and loading what an
earlier stage wrote (the prepared datasets, the trained model). Stages import this, never each other."""
from __future__ import annotations

import json
from pathlib import Path

from fcos.files import atomic_write

from .errors import UserError

PREPARED = Path("data/prepared")              # prepare: {train,val,test}.json, summary.json, shapes/
MODEL = Path("models/model.pt")               # train: the checkpoint
TRAIN_METRICS = Path("metrics/train.json")    # train
STEPS_CSV = Path("plots/train_steps.csv")     # train: per-step losses and lr (dvc plots)
EVAL_METRICS = Path("metrics/eval.json")      # evaluate
PER_CLASS_CSV = Path("plots/per_class_ap.csv")   # evaluate (dvc plots)
TEST_DETECTIONS = Path("metrics/detections.json.gz")   # evaluate: the test detections (pipeline/detections.py)
FIGURES = Path("plots/figures")               # visualize: curves, per-class AP
DETECTIONS = Path("plots/detections")         # visualize: detection images and mosaic.png


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2))


def load_dataset(split: str, **kwargs):
    """The prepared COCO json of a split (train, val, test) as a CocoDataset; kwargs go to CocoDataset."""
    from fcos.data import CocoDataset
    path = PREPARED / f"{split}.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; run `fcos-exp prepare` (or `dvc repro`) first")
    return CocoDataset(path, **kwargs)


def load_trained(params: dict, device, path: Path = MODEL):
    """The trained model made for inference (fcos.inference.for_inference) with params' decode section and
    eval.winograd applied, and its class names."""
    from fcos.checkpoint import load_model
    from fcos.inference import for_inference
    if not Path(path).is_file():
        raise UserError(f"{path}: not found; run `fcos-exp train` (or `dvc repro`) first")
    model, classes = load_model(path, device)
    model.set_decoding(**params["decode"])
    return for_inference(model, winograd=params["eval"]["winograd"]), classes
