"""Stage evaluate: COCO metrics of the checkpoint eval.checkpoint names (models/model.pt or models/best.pt) on
the test split -> metrics/eval.json,
plots/per_class_ap.csv. Under torchrun each rank scores its shard of the test images."""
from __future__ import annotations

import csv
import os

from rich.console import Console
from rich.table import Table

from fcos import distributed as dist
from fcos.coco_eval import STAT_NAMES as STATS
from fcos.files import atomic_write

from ..artifacts import load_dataset, load_trained, trained_path, write_json
from ..errors import UserError
from ..paths import EVAL_METRICS, EVAL_PLOTS, PER_CLASS_CSV, PR_METRICS, PREPARED
from ..progress import bar
from ..tracking import Tracker


def map_table(metrics: dict, title: str = "COCO bbox metrics (test split)") -> Table:
    """AP at IoU .50:.95, .50, .75 and by size; AR at 1/10/100 detections and by size: two rows of six."""
    table = Table(title=title)
    for _ in range(2):
        table.add_column("metric")
        table.add_column("value", justify="right")
    fmt = lambda n: "-" if metrics[n] is None else f"{metrics[n]:.3f}"
    for ap, ar in zip(STATS[:6], STATS[6:]):
        table.add_row(ap, fmt(ap), ar, fmt(ar))
    return table


def run(params: dict, console) -> dict:
    from fcos.data import build_loader
    from fcos.engine import evaluate

    trained = load_trained(params, device=dist.init_distributed() if "RANK" in os.environ else None)
    classes = trained.classes
    test_ds = load_dataset("test")
    if len(test_ds) == 0:
        raise UserError(f"{PREPARED / 'test.json'}: the test split has no images, so there is nothing to evaluate "
                        "(check data.test_split and run `fcos-exp prepare`)")
    if test_ds.classes != classes:
        raise UserError(f"{trained_path(params)}: trained on classes {classes}, but the test split has "
                        f"{test_ds.classes}")
    loader = build_loader(test_ds, params["eval"]["batch_size"], num_workers=params["data"]["num_workers"],
                          shard=True)
    with bar(console) as progress:
        task = progress.add_task("evaluate", total=len(loader), info="")
        m = evaluate(trained.model, loader, PREPARED / "test.json", test_ds.cat_ids, trained.device,
                     params["eval"]["backend"], trained.amp,
                     progress=lambda done, total: progress.update(task, completed=done))
    main = dist.is_main_process()
    if dist.is_distributed():
        import torch
        torch.distributed.destroy_process_group()
    if not main:   # rank 0 writes and logs the metrics of all shards
        return {}
    result = {**{k: m[k] for k in STATS}, "per_class_AP50": m["per_class_AP50"], "per_class_AP": m["per_class_AP"],
              "inference_seconds": m["inference_seconds"], "model_seconds": m["model_seconds"],
              "data_seconds": m["data_seconds"], "metric_seconds": m["metric_seconds"],
              "ms_per_image": m["ms_per_image"], "num_images": m["num_images"],
              "checkpoint": params["eval"]["checkpoint"]}
    # TIDE errors, the worst images, VOC's metric and every metric's protocol (error_analysis.py).
    from ..error_analysis import analyse
    analysis = analyse(params, m, PREPARED / "test.json", test_ds.records)
    result.update(analysis.eval_fields)
    # The detections themselves (metrics/detections.json.gz), the hash of the test data, AP/AP50 standard errors.
    from ..detections import ARTIFACT_FOLDER, GT_TAG, TEST_DETECTIONS, keep_detections
    result.update(keep_detections(m["detections"], PREPARED / "test.json", console))
    write_json(EVAL_METRICS, result)
    with atomic_write(PER_CLASS_CSV) as f:
        w = csv.writer(f)
        w.writerow(["class", "AP50", "AP"])
        for c in classes:
            w.writerow([c, _fmt(m["per_class_AP50"].get(c)), _fmt(m["per_class_AP"].get(c))])
    # PR and F1 curves, F1-optimal thresholds, confusion matrix: metrics/pr.json, plots/eval/ (eval_analysis.py).
    from ..eval_analysis import write_analysis
    pr = write_analysis(m, PREPARED / "test.json", params["eval"]["confusion_thresh"])
    with Tracker(params, new_run=False) as tracker:
        tracker.set_tags({"eval_checkpoint": params["eval"]["checkpoint"]})   # which one the test/ metrics score
        tracker.log_metrics({"test/F1": pr["F1"], "test/F1_thresh": pr["f1_thresh"]})   # None is not logged
        tracker.log_artifact(PR_METRICS, "metrics")
        tracker.log_artifact(EVAL_PLOTS, "eval")
        tracker.log_metrics({f"test/{k}": v for k, v in result.items() if isinstance(v, float)})
        tracker.log_metrics({f"test/AP50/{c}": v for c, v in m["per_class_AP50"].items() if v is not None})
        tracker.log_table({"class": classes, "AP50": [m["per_class_AP50"].get(c) for c in classes],
                           "AP": [m["per_class_AP"].get(c) for c in classes]}, "eval/per_class_ap.json")
        tracker.log_table({"metric": STATS, "value": [m[k] for k in STATS]}, "eval/map_table.json")
        tracker.log_artifact(EVAL_METRICS, "metrics")
        analysis.log(tracker)
        tracker.set_tags({GT_TAG: result[GT_TAG]})
        tracker.log_artifact(TEST_DETECTIONS, ARTIFACT_FOLDER)
    out = Console()   # data on stdout, logs on stderr
    out.print(map_table(result))
    out.print(f"protocol: {analysis.protocol_line}")
    for table in analysis.tables(result["AP50"]):
        out.print(table)
    console.print(f"{m['num_images']} images: {m['inference_seconds']:.1f} s inference ({m['ms_per_image']:.1f} "
                  f"ms/image for the model, amp {m['amp']}), {m['metric_seconds']:.2f} s COCO eval")
    console.print(f"F1 {pr['F1']:.3f} at score >= {pr['f1_thresh'] or 0:.2f} (per class in {PR_METRICS}); "
                  f"PR curves and confusion matrix in {EVAL_PLOTS}/")
    for line in analysis.notes():
        console.print(line)
    return result


def _fmt(v):
    return "" if v is None else f"{v:.4f}"
