"""`fcos-exp export`: the trained model as one ONNX graph (image in, detections out), checked against PyTorch."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..paths import PREPARED


def run(params: dict, console, model_path: Path, out: Path, check_images: int) -> dict:
    from importlib.util import find_spec

    if check_images < 0:
        raise UserError(f"--check: must be >= 0 (test images compared; 0: none), got {check_images}")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; --out names the ONNX file written")
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if find_spec(m) is None]   # before minutes of export
    if missing:
        raise UserError(f"export needs {', '.join(missing)}: pip install 'fcos-exp[export]'")
    if not model_path.is_file():
        raise UserError(f"{model_path}: not found; run `fcos-exp train` (or `dvc repro`) first")

    from fcos.checkpoint import load_model
    from fcos.data import CocoDataset, load_image
    from fcos.export import OnnxDetector, compare, export_onnx, orientations

    model, classes = load_model(model_path, "cpu")
    model.set_decoding(**params["decode"])   # written into the graph and its metadata
    out.parent.mkdir(parents=True, exist_ok=True)
    decode = ", ".join(f"{k} {v}" for k, v in params["decode"].items())
    console.print(f"exporting {model_path} to ONNX with decode {decode} (torch.export, then the conversion: "
                  f"minutes on a small CPU)")
    tmp = out.with_name(f".{out.name}.tmp")   # `out` is replaced only by a graph that passed the check
    try:
        export_onnx(model, tmp, classes)
        result = {"path": str(out), "megabytes": round(tmp.stat().st_size / 2 ** 20, 2)}
        test = PREPARED / "test.json"
        if check_images and test.is_file():
            images, records = {}, CocoDataset(test).records[:check_images]
            for r in records:
                image = load_image(r.file)
                images.update({f"{r.file} ({v.width} x {v.height})": v for v in orientations(image)})
            result.update(compare(model, OnnxDetector(tmp), images))
            if result["failed"]:
                raise UserError(f"{out}: not written: onnxruntime's detections differ from PyTorch's on "
                                f"{result['failed']} (a bug in fcos.export; `--check 0` writes it unchecked)", code=1)
            console.print(f"onnxruntime vs PyTorch on {result['images']} views of {len(records)} test images "
                          f"(landscape and portrait): the same {result['detections']} detections, boxes within "
                          f"{result['max_box_diff']:.2g} px, scores within {result['max_score_diff']:.2g}")
        elif check_images:
            console.print(f"no {test} (`fcos-exp prepare` writes it): not compared with PyTorch")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    console.print(f"{out} ({result['megabytes']} MB): input `image` float32 [3, H, W] RGB in [0, 1], any size; "
                  f"outputs `boxes` [N, 4] x1y1x2y2 pixels, `scores` [N], `labels` [N]; "
                  f"`fcos-exp predict --model {out}` runs it")
    return result
