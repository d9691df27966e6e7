"""ONNX export of a trained FCOS: one graph from an image to its detections, decoding included.

The graph (`DetectionGraph`) takes one image, float32 [3, H, W] in [0, 1] (RGB, any H and W), and runs the
model's own eval code on it (`FCOS.transform`, `FCOS.dense_outputs`, `PostProcess.detections`, written without
Python branches on sizes for this): resize, normalisation, padding, backbone, FPN and head, points, and the
decoding with the model's decode settings (score threshold, top-k per level, boxes clipped, empty boxes
dropped or kept, exact class-wise NMS, the best detections_per_img). Its outputs are boxes float32 [N, 4]
x1y1x2y2 in input-image pixels, scores float32 [N] (best first) and labels int64 [N] (class indices). The
only work left outside is reading the image: `image_array` (uint8 HWC -> float CHW / 255), used by
`OnnxDetector`, which `fcos-exp predict --model model.onnx` runs through onnxruntime.

It differs from the PyTorch model on the CPU only by the float rounding of its kernels: `compare` requires the
same detections, boxes within BOX_TOL pixels and scores within SCORE_TOL (`fcos-exp export` runs it).
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .config import DECODE_KEYS
from .errors import InputError
from .model import FCOS
from .winograd import WinogradConv2d

OPSET = 18
INPUTS = ("image",)
OUTPUTS = ("boxes", "scores", "labels")
# The most onnxruntime's detections may differ from PyTorch's on the CPU: box coordinates (pixels), scores.
BOX_TOL = 0.5
SCORE_TOL = 1e-4


def _direct_convs(module: nn.Module) -> None:
    """Every WinogradConv2d back to a plain Conv2d sharing its Parameters: its size test is a Python branch
    the exporter would freeze for the example size, and the ONNX runtime picks its own algorithm."""
    for name, m in list(module.named_modules()):
        if isinstance(m, WinogradConv2d):
            conv = nn.Conv2d(m.in_channels, m.out_channels, 3, padding=1, bias=m.bias is not None)
            conv.weight, conv.bias = m.weight, m.bias
            parent, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, leaf, conv)


class DetectionGraph(nn.Module):
    """`model` as one exportable function: image [3, H, W] in [0, 1] -> boxes [N, 4], scores [N], labels [N].

    It runs the model's own code (transform, network, points, decoding) on a batch of one; the resized size is
    a value of the running graph (fcos/transform.py), so one export serves every image size and shape."""

    def __init__(self, model: FCOS):
        super().__init__()
        self.model = copy.deepcopy(model).cpu().eval()
        _direct_convs(self.model)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        batch, sizes, orig, _ = m.transform([image])
        cls, box, ctr, points, strides, _, level_sizes = m.dense_outputs(batch)
        boxes, scores, labels, img = m.postprocess.detections(cls, box, ctr, points, strides, level_sizes, sizes)
        return m.transform.to_input_pixels(boxes, img, sizes, orig), scores, labels


def _sort_stable(self, stable=None, dim: int = -1, descending: bool = False):
    """aten.sort.stable (which torch.onnx cannot translate) as ONNX TopK over the whole axis: its specification
    keeps equal values in index order, which is what a stable sort does."""
    from onnxscript import opset18 as op
    n = op.Reshape(op.Gather(op.Shape(self), dim, axis=0), op.Constant(value_ints=[1]))
    return op.TopK(self, n, axis=dim, largest=descending, sorted=True)


def export_onnx(model: FCOS, path: str | Path, classes: list[str], example_size: tuple[int, int] = (240, 320)) -> Path:
    """Write `model` as an ONNX graph (opset 18, dynamic H and W) with input `image` and outputs `boxes`,
    `scores`, `labels`; weights inside the file; in its metadata (json): "classes" (the class names), "decode"
    (the model's DECODE_KEYS values, which the graph applies) and "config" (the whole FCOSConfig: the model's
    conventions). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = DetectionGraph(model).eval()
    image = torch.rand(3, *example_size)
    dims = {1: torch.export.Dim("height", min=2, max=16384), 2: torch.export.Dim("width", min=2, max=16384)}
    with torch.no_grad(), warnings.catch_warnings():   # torchvision's nms registration uses a deprecated name
        warnings.filterwarnings("ignore", "`create_unbacked_symint` is deprecated", FutureWarning)
        program = torch.onnx.export(graph, (image,), dynamo=True, dynamic_shapes=(dims,), opset_version=OPSET,
                                    input_names=list(INPUTS), output_names=list(OUTPUTS),
                                    custom_translation_table={torch.ops.aten.sort.stable: _sort_stable},
                                    external_data=False, verbose=False)
    config = model.config.to_dict()
    program.model.metadata_props.update({"classes": json.dumps(list(classes)),
                                         "decode": json.dumps({k: config[k] for k in DECODE_KEYS}),
                                         "config": json.dumps(config)})
    program.save(str(path))
    return path


def image_array(image) -> np.ndarray:
    """A PIL RGB image (or uint8 array [H, W, 3]) as the graph's input: float32 [3, H, W] in [0, 1]."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1), dtype=np.float32) / 255


def _first_line(e: Exception, limit: int = 200) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:limit]


class OnnxRunError(RuntimeError):
    """onnxruntime could not run a loaded graph on an image (one line: the file and its message)."""


class OnnxDetector:
    """An exported graph in onnxruntime (CPU): `detector(image)` -> {"boxes" [N, 4], "scores" [N],
    "labels" [N]} as numpy arrays, boxes in the image's pixels; `.classes`, `.decode` (the decoding settings
    inside the graph) and `.config` (the model's FCOSConfig as a dict) from the file's metadata.
    InputError (one line naming the file) for a file that is not a graph written by `export_onnx`;
    OnnxRunError for one that onnxruntime cannot run on an image."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort
        self.path = Path(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Idle threads sleep instead of spinning: a spinning pool slowed PyTorch running beside it 25x.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 4   # fatal only: its errors come back as exceptions, reported in one line
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:   # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for damaged files
            raise InputError(f"{path}: not a readable ONNX model ({_first_line(e)})") from None
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != (list(INPUTS), list(OUTPUTS)):
            raise InputError(f"{path}: not an fcos-exp detection graph (inputs {names[0]}, outputs {names[1]}; "
                             f"expected {list(INPUTS)}, {list(OUTPUTS)})")
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.classes: list[str] = json.loads(meta["classes"])
            self.decode: dict = json.loads(meta.get("decode", "{}"))   # absent in files of older versions
            self.config: dict = json.loads(meta.get("config", "{}"))
        except (KeyError, json.JSONDecodeError):
            raise InputError(f"{path}: no readable class names in the ONNX metadata; not written by fcos.export") \
                from None
        if not isinstance(self.classes, list) or not all(isinstance(c, str) for c in self.classes):
            raise InputError(f"{path}: the ONNX metadata's classes are not a list of names")

    def __call__(self, image) -> dict[str, np.ndarray]:
        x = image_array(image)
        try:
            boxes, scores, labels = self.session.run(None, {INPUTS[0]: x})
        except Exception as e:   # onnxruntime's own types
            raise OnnxRunError(f"{self.path}: onnxruntime failed on a {x.shape[2]} x {x.shape[1]} image "
                               f"({_first_line(e)})") from None
        return {"boxes": boxes, "scores": scores, "labels": labels}


def match_detections(a: dict, b: dict) -> tuple[float, float] | None:
    """Pair two detection sets of one image ({"boxes" [N, 4], "scores" [N], "labels" [N]} numpy), each of a's
    in score order with b's unpaired detection of its label whose box is nearest (largest coordinate
    difference): order-free, as float rounding may swap near-equal scores. A detection may go unpaired only at
    the other set's cut-off (score within SCORE_TOL of the other's lowest: the top-k or score threshold kept
    a near-tie on one side and its twin on the other). Returns (largest box difference, largest score
    difference) over the pairs, or None when they do not pair up."""
    if not len(a["labels"]) or not len(b["labels"]):
        return (0.0, 0.0) if len(a["labels"]) == len(b["labels"]) else None
    cost = np.abs(a["boxes"][:, None] - b["boxes"][None]).max(-1)               # [N, M] pixels
    cost[a["labels"][:, None] != b["labels"][None]] = np.inf
    a_tail, b_tail = a["scores"] <= b["scores"].min() + SCORE_TOL, b["scores"] <= a["scores"].min() + SCORE_TOL
    paired = np.zeros(len(b["labels"]), bool)
    box = score = 0.0
    for i in np.argsort(-a["scores"], kind="stable"):
        j = int(np.argmin(cost[i]))
        if a_tail[i] and cost[i, j] > BOX_TOL:   # a near-tie at the cut-off, its twin not kept by b
            continue
        if not np.isfinite(cost[i, j]):
            return None
        box, score = max(box, float(cost[i, j])), max(score, float(abs(a["scores"][i] - b["scores"][j])))
        cost[:, j], paired[j] = np.inf, True
    return (box, score) if (paired | b_tail).all() else None


def orientations(image) -> list:
    """A PIL image as a landscape and a portrait view (the image, its transpose, or a crop to 3/4 of a side of
    a square one): the resize, padding and point grid differ with the orientation."""
    w, h = image.size
    if w == h:
        return [image.crop((0, 0, w, max(1, h * 3 // 4))), image.crop((0, 0, max(1, w * 3 // 4), h))]
    return [image, image.transpose(Image.Transpose.TRANSPOSE)]


@torch.inference_mode()
def compare(model: FCOS, detector: OnnxDetector, images: dict) -> dict:
    """PyTorch `model` (eval mode, on the CPU as the graph) against the exported graph on PIL images
    ({name: image}): the largest box difference (pixels) and score difference over paired detections
    (`match_detections`), the number of images and detections, and `failed`: the first image whose detections
    differ (count or labels, boxes beyond BOX_TOL px, scores beyond SCORE_TOL) and how, or None."""
    box = score = 0.0
    count, failed = 0, None
    for name, image in images.items():
        ref = {k: v.cpu().numpy() for k, v in model([torch.from_numpy(image_array(image))])[0].items()}
        out = detector(image)
        pairs = match_detections(ref, out)
        count += len(ref["labels"])
        if pairs is None:
            failed = failed or f"{name}: {len(ref['labels'])} detections in PyTorch, {len(out['labels'])} in " \
                               f"onnxruntime that do not pair up (labels, or beyond the cut-off's near-ties)"
            continue
        box, score = max(box, pairs[0]), max(score, pairs[1])
        if pairs[0] > BOX_TOL or pairs[1] > SCORE_TOL:
            failed = failed or f"{name}: boxes differ by {pairs[0]:.3g} px, scores by {pairs[1]:.3g}"
    return {"max_box_diff": box, "max_score_diff": score, "images": len(images), "detections": count,
            "failed": failed}
