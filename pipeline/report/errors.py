"""Report blocks of evaluate's error analysis (pipeline/error_analysis.py): the protocol each run was scored
with (a header line and a column), AP at IoU 0.5 under each protocol, the TIDE breakdown of every run side
by side, the top runs' error figures and the best run's worst images. Runs evaluated before these existed
show MISSING cells and a line saying so."""
from __future__ import annotations

from pathlib import Path

from fcos.tide import MAIN_ERRORS, SPECIAL_ERRORS

from .eval import _download
from .figures import label
from .sections import MISSING, num

PROTOCOL_TAG = "eval_protocol"
ERRORS_FIGURE = "eval/errors.png"
WORST_MOSAIC = "eval/worst/mosaic.png"
SCORED = "test/AP50"       # a run evaluate has scored


def protocol_header(rows: list) -> dict[str, str]:
    """The header's "evaluation protocol" line: the one every run shares, or where to read each run's."""
    found = {r.tags[PROTOCOL_TAG] for r in rows if PROTOCOL_TAG in r.tags}
    scored = [r for r in rows if SCORED in r.metrics]
    untagged = sum(PROTOCOL_TAG not in r.tags for r in scored)
    if not found:
        text = "not recorded (no run was evaluated since evaluate records it)" if scored else "no run evaluated yet"
    elif len(found) == 1:
        text = found.pop() + (f" ({untagged} older runs: not recorded)" if untagged else "")
    else:
        text = f"{len(found)} different protocols: see the protocol column of 'AP at IoU 0.5 by protocol'"
    return {"evaluation protocol": text}


def error_blocks(client, rows: list, top: list, best, assets: Path) -> list[dict]:
    scored = [r for r in rows if SCORED in r.metrics]
    blocks: list[dict] = [{"kind": "h2", "text": "AP at IoU 0.5 by protocol"}]
    if not scored:
        return blocks + [{"kind": "p", "text": "No run has test metrics yet (`fcos-exp evaluate`)."}]
    blocks += [
        {"kind": "p", "text": "COCO AP50 (101-point interpolation, difficult boxes as data.eval_difficult says) and "
                              "VOC's mAP@0.5 (difficult boxes ignored; 11-point for VOC07, all-point from VOC2010) "
                              f"are different numbers on the same detections: compare like with like. {MISSING}: "
                              "not computed (eval.voc_metric) or not recorded."},
        _table("protocols", ["run", "id", "COCO AP50", "VOC07 11-point mAP", "VOC all-point mAP", "protocol"],
               [[r.name, r.run_id[:8], num(r.metrics.get(SCORED)), num(r.metrics.get("test/voc07_mAP")),
                 num(r.metrics.get("test/voc_mAP")), r.tags.get(PROTOCOL_TAG, MISSING)] for r in scored])]
    blocks.append({"kind": "h2", "text": "Where AP50 is lost (TIDE errors)"})
    have = [r for r in scored if "test/errors/AP50" in r.metrics]
    text = ("AP50 each run would gain if one error type were fixed (docs/errors.md): Cls wrong class, Loc loose "
            "box, Both, Dupe duplicate, Bkg background, Miss missed box; FalsePos / FalseNeg: every false "
            "positive scored last / every missed box removed. TIDE AP50 is tidecv's (a class detected but absent "
            "from the test split counts 0).")
    if len(have) < len(scored):
        text += f" {MISSING}: the run was evaluated before the breakdown existed (re-run `fcos-exp evaluate`)."
    names = [*MAIN_ERRORS, *SPECIAL_ERRORS]
    blocks += [{"kind": "p", "text": text},
               _table("errors", ["run", "id", "TIDE AP50", *names],
                      [[r.name, r.run_id[:8], num(r.metrics.get("test/errors/AP50")),
                        *(num(r.metrics.get(f"test/errors/{n}")) for n in names)] for r in scored])]
    figures = [(p, f"{label(r)}: TIDE errors") for r in top if (p := _download(client, r, ERRORS_FIGURE, assets))]
    if figures:
        blocks.append({"kind": "grid", "images": figures})
    mosaic = best and _download(client, best, WORST_MOSAIC, assets)
    blocks.append({"kind": "h2", "text": f"Worst test images of the best run{f' ({best.name})' if best else ''}"})
    blocks.append({"kind": "p", "text": "The test images losing the most AP50 (each error type's dAP50 shared "
                                        "among its errors), ground truth beside the detections, each error boxed "
                                        "in its type's colour."})
    blocks.append({"kind": "img", "path": mosaic, "alt": "worst images: ground truth and errors by type"} if mosaic
                  else {"kind": "p", "text": "The best run logged no worst images (an older run, no image with an "
                                             "error, or eval.worst_images 0)."})
    return blocks


def _table(table_id: str, head: list[str], rows: list[list[str]]) -> dict:
    return {"kind": "table", "id": table_id, "head": head, "rows": rows, "classes": [""] * len(rows)}
