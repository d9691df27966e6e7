"""Report blocks from the figures the stages log: precision-recall, F1 and confusion of the top runs side by
side (evaluate's eval/ artifacts), and the best run's dataset statistics (train's dataset/ artifact)."""
from __future__ import annotations

from pathlib import Path

from .figures import label

EVAL_FIGURES = [("eval/pr_curve.png", "precision-recall at IoU 0.5"),
                ("eval/confusion_matrix_normalized.png", "confusion matrix, normalised"),
                ("eval/f1_curve.png", "F1 against the score threshold")]
DATASET_FIGURE = "dataset/dataset.png"


def _download(client, row, artifact: str, assets: Path) -> Path | None:
    try:
        return Path(client.download_artifacts(row.run_id, artifact, str(assets / row.run_id[:8])))
    except Exception:   # not logged (an older run, evaluate not run), unreachable artifact store
        return None


def eval_blocks(client, top: list, best, assets: Path) -> list[dict]:
    """One row of images per figure kind, a column per top run; then the best run's dataset figure."""
    blocks: list[dict] = [{"kind": "h2", "text": "Precision-recall, F1 and confusion of the top runs"}]
    for artifact, title in EVAL_FIGURES:
        images = [(p, f"{label(r)}: {title}") for r in top if (p := _download(client, r, artifact, assets))]
        if images:
            blocks.append({"kind": "grid", "images": images})
    if len(blocks) == 1:
        blocks.append({"kind": "p", "text": "No top run logged precision-recall or confusion figures "
                                            "(`fcos-exp evaluate` logs them)."})
    dataset = best and _download(client, best, DATASET_FIGURE, assets)
    if dataset:
        blocks += [{"kind": "h2", "text": f"Dataset of the best run ({best.name})"},
                   {"kind": "img", "path": dataset, "alt": "dataset statistics per split"}]
    return blocks
