"""`fcos-exp export`: the trained model as one ONNX graph (image in, detections out), checked against PyTorch."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .prepare import PREPARED


def run(params: dict, console, model_path: Path, out: Path, check_images: int) -> dict:
    from fcos.checkpoint import load_model
    from fcos.data import CocoDataset, load_image
    try:
        from fcos.export import OnnxDetector, compare, export_onnx
        import onnxruntime  # noqa: F401  (checked before minutes of export)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"export needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                        "pip install 'fcos-exp[export]'") from None
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
