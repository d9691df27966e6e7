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


def detector(model_path: Path | None, device):
    """(detect: PIL image -> {"boxes", "scores", "labels"} numpy arrays, class names) for models/model.pt
    (None), another checkpoint, or an exported .onnx graph run by onnxruntime."""
    import torch

    from fcos.data import to_tensor

    if model_path is not None and model_path.suffix == ".onnx":
        if not model_path.is_file():
            raise UserError(f"{model_path}: no such file")
        try:
            from fcos.export import OnnxDetector
            onnx = OnnxDetector(model_path)
        except ImportError:
            raise UserError("an .onnx model needs onnxruntime: pip install 'fcos-exp[export]'") from None
        return onnx, onnx.classes
    if model_path is None:
        model, classes = load_trained(device)
    else:
        from fcos.checkpoint import load_model
        from fcos.fuse import for_inference
        model, classes = load_model(model_path, device)
        model = for_inference(model)

    @torch.inference_mode()
    def detect(image):
        return {k: v.cpu().numpy() for k, v in model([to_tensor(image).to(device)])[0].items()}
    return detect, classes


def run(params: dict, console, inputs: list[Path], out_dir: Path, score_thresh: float | str | None,
        model_path: Path | None = None) -> dict:
    from fcos.data import DataError, load_image

    from ..drawing import draw_boxes
    from ..eval_analysis import class_thresholds
    from ..progress import bar

    files = collect(inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    detect, classes = detector(model_path, device_of(params))
    thresh = class_thresholds(params["visualize"]["score_thresh"] if score_thresh is None else score_thresh, classes)
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
            det = detect(image)
            keep = det["scores"] >= thresh[det["labels"]]
            boxes, scores, labels = (det[k][keep] for k in ("boxes", "scores", "labels"))
            draw_boxes(image, boxes, labels, classes, scores).save(out_dir / f"{f.stem}.png")
            results.append({"file": str(f), "width": image.width, "height": image.height, "detections": [
                {"box": [round(v, 2) for v in b], "score": round(float(s), 4), "label": classes[int(c)]}
                for b, s, c in zip(boxes.tolist(), scores, labels)]})
    (out_dir / "detections.json").write_text(json.dumps(results, indent=2))
    console.print(f"{len(results)} images annotated in {out_dir}/ (detections.json), {skipped} skipped")
    return {"images": len(results), "skipped": skipped}
