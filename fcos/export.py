"""ONNX export of a trained FCOS: one graph from an image to its detections, decoding included.

The graph (`DetectionGraph`) takes one image, float32 [3, H, W] in [0, 1] (RGB, any H and W), and does what
`FCOS.eval()` does: resize (short side min_size, long side <= max_size, bilinear), ImageNet normalisation,
zero padding to /32, backbone, FPN and head, then the decoding of `PostProcess` (score threshold, top-k per
level, boxes clipped, class-wise NMS, the best detections_per_img). Its outputs are boxes float32 [N, 4]
x1y1x2y2 in input-image pixels, scores float32 [N] (best first) and labels int64 [N] (class indices). The
only work left outside is reading the image: `image_array` (uint8 HWC -> float CHW / 255), used by
`OnnxDetector`, which `fcos-exp predict --model model.onnx` runs through onnxruntime.

It differs from the PyTorch model only by float rounding (the size arithmetic runs in float32, class-wise
NMS shifts boxes by class where the model may run NMS class by class); tests/test_export_onnx.py checks
the same labels, boxes within a pixel and scores within 1e-3 on the test images.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from .model import FCOS
from .points import make_points
from .winograd import WinogradConv2d

OPSET = 18


def _direct_convs(module: nn.Module) -> None:
    """Every WinogradConv2d back to a plain Conv2d sharing its Parameters: its size test is a Python branch
    the exporter would freeze for the example size, and the ONNX runtime picks its own algorithm."""
    for name, m in list(module.named_modules()):
        if isinstance(m, WinogradConv2d):
            conv = nn.Conv2d(m.in_channels, m.out_channels, 3, padding=1, bias=m.bias is not None)
            conv.weight, conv.bias = m.weight, m.bias
            parent, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, leaf, conv)


def _round(x):
    """Python's round() (half to even, as `Transform` resizes) on a symbolic size, without a branch."""
    r = math.floor(x + 0.5)
    return torch.sym_ite((r - x == 0.5) & (r % 2 == 1), r - 1, r)


class DetectionGraph(nn.Module):
    """`model` as one exportable function: image [3, H, W] in [0, 1] -> boxes [N, 4], scores [N], labels [N].

    Sizes stay symbolic (no Python branch on H or W), so one export serves every image size."""

    def __init__(self, model: FCOS):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        _direct_convs(self.model)
        self.cfg = model.config

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg, m = self.cfg, self.model
        h, w = image.shape[-2:]
        hf, wf = torch.sym_float(h), torch.sym_float(w)
        scale = torch.sym_min(cfg.min_sizes[-1] / torch.sym_min(hf, wf), cfg.max_size / torch.sym_max(hf, wf))
        nh, nw = torch.sym_max(1, _round(hf * scale)), torch.sym_max(1, _round(wf * scale))
        x = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)
        x = (x - m.transform.mean) / m.transform.std
        d = cfg.size_divisible
        # Pad to /d as (n + d - 1) // d * d, not -(-n // d) * d: ONNX's Div truncates negative quotients.
        x = F.pad(x, (0, (nw + d - 1) // d * d - nw, 0, (nh + d - 1) // d * d - nh))
        features = m.backbone(x)
        cls, box, ctr = m.head(features)
        shapes = [tuple(f.shape[-2:]) for f in features]
        points, strides, _ = make_points(shapes, cfg.strides, x.device)
        scores = torch.sqrt(torch.sigmoid(cls[0]) * torch.sigmoid(ctr[0])[:, None])     # [P, K]
        k = scores.shape[1]

        # Top-k per level, then the score threshold (the same set as threshold first, top-k second).
        top_scores, top_idx, start = [], [], 0
        for fh, fw in shapes:
            level = scores[start:start + fh * fw].flatten()
            s, i = level.topk(torch.sym_min(cfg.topk_candidates, fh * fw * k))
            top_scores.append(s)
            top_idx.append(i + start * k)
            start = start + fh * fw
        s, i = torch.cat(top_scores), torch.cat(top_idx)
        keep = s > cfg.score_thresh
        s, i = s[keep], i[keep]
        pt, labels = i // k, i % k
        ltrb = box[0, pt] * strides[pt, None]
        boxes = torch.cat((points[pt] - ltrb[:, :2], points[pt] + ltrb[:, 2:]), dim=1)
        xs, ys = boxes[:, 0::2].clamp(0, nw), boxes[:, 1::2].clamp(0, nh)
        boxes = torch.stack((xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]), dim=1)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, s, labels = boxes[ok], s[ok], labels[ok]
        offset = (labels * (torch.sym_max(nh, nw) + 1)).to(boxes)[:, None]    # class-wise NMS: classes never overlap
        kept = nms(boxes + offset, s, cfg.nms_thresh)[: cfg.detections_per_img]
        boxes = boxes[kept]
        xs, ys = boxes[:, 0::2] * (wf / nw), boxes[:, 1::2] * (hf / nh)   # back to input-image pixels
        return torch.stack((xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]), dim=1), s[kept], labels[kept]


def export_onnx(model: FCOS, path: str | Path, classes: list[str], example_size: tuple[int, int] = (240, 320)) -> Path:
    """Write `model` as an ONNX graph (opset 18, dynamic H and W) with input `image` and outputs `boxes`,
    `scores`, `labels`; weights inside the file, class names (json) in its metadata "classes". Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = DetectionGraph(model).cpu().eval()
    image = torch.rand(3, *example_size)
    dims = {1: torch.export.Dim("height", min=2, max=16384), 2: torch.export.Dim("width", min=2, max=16384)}
    with torch.no_grad(), warnings.catch_warnings():   # torchvision's nms registration uses a deprecated name
        warnings.filterwarnings("ignore", "`create_unbacked_symint` is deprecated", FutureWarning)
        program = torch.onnx.export(graph, (image,), dynamo=True, dynamic_shapes=(dims,), opset_version=OPSET,
                                    input_names=["image"], output_names=["boxes", "scores", "labels"],
                                    external_data=False, verbose=False)
    program.model.metadata_props["classes"] = json.dumps(list(classes))
    program.save(str(path))
    return path


def image_array(image) -> np.ndarray:
    """A PIL RGB image (or uint8 array [H, W, 3]) as the graph's input: float32 [3, H, W] in [0, 1]."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1), dtype=np.float32) / 255


class OnnxDetector:
    """An exported graph in onnxruntime (CPU): `detector(image)` -> {"boxes" [N, 4], "scores" [N],
    "labels" [N]} as numpy arrays, boxes in the image's pixels; `.classes` from the file's metadata."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Idle threads sleep instead of spinning: a spinning pool slowed PyTorch running beside it 25x.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "classes" not in meta:
            raise ValueError(f"{path}: no class names in the ONNX metadata; not written by fcos.export")
        self.classes: list[str] = json.loads(meta["classes"])

    def __call__(self, image) -> dict[str, np.ndarray]:
        boxes, scores, labels = self.session.run(None, {"image": image_array(image)})
        return {"boxes": boxes, "scores": scores, "labels": labels}


def match_detections(a: dict, b: dict) -> tuple[float, float] | None:
    """Pair two detection sets of one image ({"boxes" [N, 4], "scores" [N], "labels" [N]} numpy), each of a's
    in score order with b's unpaired detection of its label whose box is nearest (largest coordinate
    difference): order-free, as float rounding may swap near-equal scores. Returns (largest box difference,
    largest score difference) over the pairs, or None when counts or labels do not pair up."""
    n = len(a["labels"])
    if len(b["labels"]) != n:
        return None
    cost = np.abs(a["boxes"][:, None] - b["boxes"][None]).max(-1)               # [N, N] pixels
    cost[a["labels"][:, None] != b["labels"][None]] = np.inf
    box = score = 0.0
    for i in np.argsort(-a["scores"], kind="stable"):
        j = int(np.argmin(cost[i]))
        if not np.isfinite(cost[i, j]):
            return None
        box, score = max(box, float(cost[i, j])), max(score, float(abs(a["scores"][i] - b["scores"][j])))
        cost[:, j] = np.inf
    return box, score


@torch.inference_mode()
def compare(model: FCOS, detector: OnnxDetector, images) -> dict:
    """PyTorch `model` (eval mode) against the exported graph on PIL images: the largest box difference
    (pixels) and score difference over paired detections (`match_detections`), whether every image's
    detections paired up (same count, same labels), and the number of images and detections."""
    box = score = 0.0
    same, count = True, 0
    for image in images:
        ref = {k: v.cpu().numpy() for k, v in model([torch.from_numpy(image_array(image))])[0].items()}
        pairs = match_detections(ref, detector(image))
        same &= pairs is not None
        if pairs:
            box, score = max(box, pairs[0]), max(score, pairs[1])
        count += len(ref["labels"])
    return {"max_box_diff": box, "max_score_diff": score, "same_labels": same, "images": len(images),
            "detections": count}
