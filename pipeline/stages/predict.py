"""`fcos-exp predict`: images or folders in; annotated images and a JSON of detections out."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts import write_text
from ..errors import UserError
from ..inference import load_trained
from ..paths import PR_METRICS

if TYPE_CHECKING:
    from ..params_schema import Params

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def collect(inputs: list[Path]) -> list[Path]:
    """The image files named or held (not recursively) by `inputs`, in order, each once."""
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise UserError(f"no images found in {', '.join(map(str, inputs))}")
    return unique


def output_names(files: list[Path], out_dir: Path) -> list[Path]:
    """<stem>.png per image in out_dir; a name already given (case aside) gets -2, -3, ... until it is free
    (a/x.jpg, b/x.jpg and c/x-2.jpg give x.png, x-2.png and x-2-2.png). An output that would replace an
    input image is refused: predict never writes over its inputs."""
    taken: set[str] = {"detections.json"}
    outs = []
    for f in files:
        name, n = f"{f.stem}.png", 1
        while name.lower() in taken:
            n += 1
            name = f"{f.stem}-{n}.png"
        taken.add(name.lower())
        outs.append(out_dir / name)
    inputs = {f.resolve() for f in files}
    clash = next((o for o in outs if o.resolve() in inputs), None)
    if clash is not None or (out_dir / "detections.json").resolve() in inputs:
        raise UserError(f"{out_dir}: writing there would replace the input image {clash}; choose another --out")
    return outs


def detector(params: Params, model_path: Path | None):
    """(detect: PIL image -> {"boxes", "scores", "labels"} numpy arrays, class names) for the checkpoint
    eval.checkpoint names (None), another checkpoint, or an exported .onnx graph run by onnxruntime."""

    from fcos.data import to_tensor

    if model_path is not None and model_path.suffix == ".onnx":
        if not model_path.is_file():
            raise UserError(f"{model_path}: no such file")
        try:
            from fcos.export import OnnxDetector
            onnx = OnnxDetector(model_path)
        except ImportError:
            raise UserError("an .onnx model needs onnxruntime: pip install 'fcos-exp[export]'") from None
        return onnx, onnx.classes   # an unreadable or foreign file is an InputError: one line already
    trained = load_trained(params, model_path)

    def detect(image):
        return {k: (v.float() if v.is_floating_point() else v).cpu().numpy()
                for k, v in trained.detect([to_tensor(image)])[0].items()}
    return detect, trained.classes


def run(params: Params, console, inputs: list[Path], out_dir: Path, score_thresh: float | str | None,
        model_path: Path | None = None) -> dict:
    from fcos.data import DataError, load_image
    from fcos.export import OnnxRunError

    from ..drawing import draw_boxes, save_image
    from ..eval_analysis import NO_F1_THRESH, class_thresholds
    from ..progress import bar

    files = collect(inputs)
    outs = output_names(files, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    detect, classes = detector(params, model_path)
    baked = getattr(detect, "decode", None)   # an .onnx graph decodes with the settings it was exported with
    if baked:
        differ = {k: v for k, v in asdict(params.decode).items() if baked.get(k) != v}
        console.print(f"{model_path}: decoding inside the graph: {', '.join(f'{k} {v}' for k, v in baked.items())}"
                      + (f" (params decode differs: {', '.join(f'{k} {v}' for k, v in differ.items())}; "
                         f"`fcos-exp export` again applies it)" if differ else ""))
    setting = params.visualize.score_thresh if score_thresh is None else score_thresh
    if score_thresh is None and setting == "f1" and not PR_METRICS.is_file():
        console.print(f"no {PR_METRICS} yet (`fcos-exp evaluate` writes it): drawing scores >= {NO_F1_THRESH}")
        setting = NO_F1_THRESH
    thresh = class_thresholds(setting, classes)
    results, skipped = [], 0
    with bar(console) as progress:
        task = progress.add_task("predict", total=len(files), info="")
        for f, out in zip(files, outs):
            progress.advance(task)
            try:
                image = load_image(f)
            except DataError as e:
                console.print(f"skipped {e}")
                skipped += 1
                continue
            try:
                det = detect(image)
            except OnnxRunError as e:   # the graph, not the image, is at fault: stop
                raise UserError(f"{e} ({f})", code=1) from None
            keep = det["scores"] >= thresh[det["labels"]]
            boxes, scores, labels = (det[k][keep] for k in ("boxes", "scores", "labels"))
            save_image(draw_boxes(image, boxes, labels, classes, scores), out)
            results.append({"file": str(f), "output": str(out), "width": image.width, "height": image.height,
                            "detections": [{"box": [round(float(v), 2) for v in b], "score": round(float(s), 4),
                                            "label": classes[int(c)]}
                                           for b, s, c in zip(boxes.tolist(), scores, labels)]})
    write_text(out_dir / "detections.json", json.dumps(results, indent=2))
    console.print(f"{len(results)} images annotated in {out_dir}/ (detections.json), {skipped} skipped")
    return {"images": len(results), "skipped": skipped}
