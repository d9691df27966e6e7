"""Stage prepare: generate or read the dataset, check the annotations, write COCO json per split."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..artifacts import replaced_folder, write_json
from ..errors import UserError
from ..paths import DATASET_PLOTS, PREPARED

if TYPE_CHECKING:
    from ..params_schema import Params


def _records(params: Params, report, prepared: Path):
    """(train records, test records, classes, cat_ids) for the configured format."""
    from fcos.data import generate_shapes, read_coco, read_voc
    d = params.data
    if d.format == "coco":
        c = d.coco
        missing = [k for k in ("train_ann", "test_ann") if not getattr(c, k)]
        if missing:
            raise UserError(f"params: data.coco.{missing[0]} must name a COCO instances json for format coco")
        root = Path(d.root)   # relative COCO paths are relative to data.root (a dvc.yaml dependency)
        train, classes, cat_ids = read_coco(root / c.train_ann, c.train_images and root / c.train_images,
                                            report, check_images=True)
        test, test_classes, _ = read_coco(root / c.test_ann, c.test_images and root / c.test_images,
                                          report, check_images=True)
        if test_classes != classes:
            raise UserError(f"{c['test_ann']}: categories differ from {c['train_ann']}")
        return train, test, classes, cat_ids
    if d.format == "shapes":
        s = d.shapes
        # drawn by as many processes as torch has threads: the share of the CPU this process was given
        root = generate_shapes(prepared / "shapes", seed=s.seed, num_trainval=s.num_trainval,
                               num_test=s.num_test, image_size=s.image_size,
                               min_radius=s.min_radius, colours=s.colours, workers=torch.get_num_threads())
    else:
        root = Path(d.root)
    train, classes = read_voc(root, d.train_split, d.classes, report, check_images=True)
    test, _ = read_voc(root, d.test_split, classes, report, check_images=True)
    return train, test, classes, list(range(1, len(classes) + 1))


def _source(params: Params, split: str) -> str:
    d = params.data
    if d.format == "coco":
        return str(Path(d.root) / getattr(d.coco, f"{split}_ann"))
    if d.format == "voc":
        return str(Path(d.root) / "ImageSets" / "Main" / f"{getattr(d, split + '_split')}.txt")
    return "data.shapes"


def run(params: Params, console) -> dict:
    """Writes data/prepared/{train,val,test}.json and summary.json (and shapes/ for the embedded data), all
    at once: an interrupted prepare leaves the previous data/prepared as it was. Returns the summary."""
    with replaced_folder(PREPARED) as prepared:
        summary, problems = _prepare(params, prepared)
    console.print(f"[bold]prepared[/] {summary['images']} images, {summary['boxes']} boxes, "
                  f"{len(summary['classes'])} classes; {problems}; look at {DATASET_PLOTS / 'dataset.png'}")
    return summary


def _prepare(params: Params, prepared: Path) -> tuple[dict, str]:
    """The splits written into `prepared`; returns the summary and the one-line account of problems."""
    from fcos.data import DataReport, write_coco
    report = DataReport(strict=params.data.strict)
    train, test, classes, cat_ids = _records(params, report, prepared)
    for split, records in (("train", train), ("test", test)):
        if not records:
            raise UserError(f"{_source(params, split)}: the {split} split has no usable images")
    rng = np.random.default_rng(params.train.seed)
    order = rng.permutation(len(train))
    n_val = int(round(params.data.val_fraction * len(train)))
    val = [train[i] for i in sorted(order[:n_val])]
    train = [train[i] for i in sorted(order[n_val:])]
    if not train:
        raise UserError(f"data.val_fraction: {params.data.val_fraction} leaves no training image "
                        f"of {len(val)}")
    ignore_difficult = not params.data.eval_difficult
    write_coco(prepared / "train.json", train, classes, cat_ids, False)
    write_coco(prepared / "val.json", val, classes, cat_ids, ignore_difficult)
    write_coco(prepared / "test.json", test, classes, cat_ids, ignore_difficult)
    summary = {"format": params.data.format, "classes": classes,
               "images": {"train": len(train), "val": len(val), "test": len(test)},
               "boxes": {k: int(sum(len(r.boxes) for r in v))
                         for k, v in (("train", train), ("val", val), ("test", test))},
               "problems": dict(report.counts), "problem_lines": report.lines[:1000]}
    # Dataset statistics per split (summary.json "stats") and plots/dataset/ (dataset.png, objects_per_class.csv).
    from ..figures_dataset import write_dataset_outputs
    summary["stats"] = write_dataset_outputs({"train": train, "val": val, "test": test}, classes)
    write_json(prepared / "summary.json", summary)
    return summary, report.summary()
