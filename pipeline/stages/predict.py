"""`fcos-exp predict`: images or folders in; annotated images and a JSON of detections out."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..params import device_of
from .evaluate import load_trained

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def collect(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    if not files:
        raise UserError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def run(params: dict, console, inputs: list[Path], out_dir: Path, score_thresh: float | None) -> dict:
    import torch

    from fcos.data import DataError, load_image, to_tensor

    from ..drawing import draw_boxes
    from ..progress import bar

    files = collect(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = device_of(params)
    model, classes = load_trained(device)
    thresh = params["visualize"]["score_thresh"] if score_thresh is None else score_thresh
    results, skipped = [], 0
    with bar(console) as progress:
        task = progress.add_task("predict", total=len(files), info="")
        for f in files:
            progress.advance(task)
            try:
                image = load_image(f)
            except DataError as e:
                console.print(f"skipped {e}")
                skipped += 1
                continue
            with torch.inference_mode():
                det = model([to_tensor(image).to(device)])[0]
            keep = det["scores"] >= thresh
            boxes, scores, labels = (det[k][keep].cpu() for k in ("boxes", "scores", "labels"))
            draw_boxes(image, boxes, labels, classes, scores).save(out_dir / f"{f.stem}.png")
            results.append({"file": str(f), "width": image.width, "height": image.height, "detections": [
                {"box": [round(v, 2) for v in b], "score": round(float(s), 4), "label": classes[int(c)]}
                for b, s, c in zip(boxes.tolist(), scores, labels)]})
    (out_dir / "detections.json").write_text(json.dumps(results, indent=2))
    console.print(f"{len(results)} images annotated in {out_dir}/ (detections.json), {skipped} skipped")
    return {"images": len(results), "skipped": skipped}
