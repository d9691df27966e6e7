"""`fcos-exp export`: the trained model as one ONNX graph (image in, detections out), checked against PyTorch."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..paths import PREPARED


def run(params: dict, console, model_path: Path, out: Path, check_images: int) -> dict:
    from importlib.util import find_spec

    from fcos.checkpoint import load_model
    from fcos.data import CocoDataset, load_image
    from fcos.export import OnnxDetector, compare, export_onnx

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if find_spec(m) is None]   # before minutes of export
    if missing:
        raise UserError(f"export needs {', '.join(missing)}: pip install 'fcos-exp[export]'")
    if not model_path.is_file():
        raise UserError(f"{model_path}: not found; run `fcos-exp train` (or `dvc repro`) first")
    model, classes = load_model(model_path, "cpu")
    console.print(f"exporting {model_path} to ONNX (torch.export, then the conversion: minutes on a small CPU)")
    export_onnx(model, out, classes)
    result = {"path": str(out), "megabytes": round(out.stat().st_size / 2 ** 20, 2)}
    test = PREPARED / "test.json"
    if check_images and test.is_file():
        records = CocoDataset(test).records[:check_images]
        result.update(compare(model, OnnxDetector(out), [load_image(r.file) for r in records]))
        console.print(f"onnxruntime vs PyTorch on {result['images']} test images: labels "
                      f"{'identical' if result['same_labels'] else 'DIFFER'}, boxes within "
                      f"{result['max_box_diff']:.2g} px, scores within {result['max_score_diff']:.2g}")
    console.print(f"{out} ({result['megabytes']} MB): input `image` float32 [3, H, W] RGB in [0, 1], any size; "
                  f"outputs `boxes` [N, 4] x1y1x2y2 pixels, `scores` [N], `labels` [N]; "
                  f"`fcos-exp predict --model {out}` runs it")
    return result
