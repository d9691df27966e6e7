"""Batch-1 inference of the exported ONNX graph in onnxruntime against PyTorch on CPU (what `fcos-exp predict`
runs: `fcos.inference.for_inference`), image in, detections out, interleaved rounds (A B, B A, ...); prints the CPU,
the median seconds per image, the ratio, and checks both give the same detections.

    python benchmarks/bench_onnx.py [--checkpoint models/model.pt] [--size 320] [--images 4] [--rounds 5] [--threads N]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import cpu_label, interleave, median
from PIL import Image

from fcos import FCOS
from fcos.checkpoint import load_model
from fcos.export import OnnxDetector, export_onnx, image_array, match_detections
from fcos.inference import for_inference


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, help="a trained model (default: a random VOC-sized ResNet-18 FCOS)")
    ap.add_argument("--size", type=int, default=320, help="min_size of the random model")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, help="threads of both (default: torch's and onnxruntime's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, classes = load_model(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = FCOS(num_classes=20, backbone="resnet18", fpn_channels=256, head_convs=4, gn_groups=32,
                     min_size=args.size, max_size=args.size * 3 // 2).eval()
        torch.nn.init.normal_(model.head.cls_logits.weight, std=0.05)   # distinct scores (the prior init ties them)
        torch.nn.init.constant_(model.head.cls_logits.bias, -4.0)
        classes = [f"c{i}" for i in range(20)]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)) for _ in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        detector = OnnxDetector(export_onnx(model, Path(tmp) / "model.onnx", classes), threads=args.threads)
    fast = for_inference(model)

    @torch.inference_mode()
    def pytorch():
        return [{k: v.numpy() for k, v in fast([torch.from_numpy(image_array(im))])[0].items()} for im in images]

    def onnxruntime():
        return [detector(im) for im in images]

    pairs = [match_detections(a, b) for a, b in zip(pytorch(), onnxruntime(), strict=True)]
    same = [p for p in pairs if p is not None]
    times = interleave({"pytorch": pytorch, "onnxruntime": onnxruntime}, args.rounds)
    t_pt, t_ort = (median(times[k]) / len(images) for k in ("pytorch", "onnxruntime"))
    label = cpu_label()
    print(f"{label} onnxruntime intra-op threads: {args.threads or 'default (one per core)'}")
    print(f"model: {'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'random resnet18 FCOS'}, "
          f"min_size {model.config.min_sizes[-1]}, {len(images)} images 500x375, {args.rounds} rounds")
    print(f"pytorch (for_inference) {1000 * t_pt:7.1f} ms/image")
    print(f"onnxruntime             {1000 * t_ort:7.1f} ms/image")
    print(f"speed-up of onnxruntime over pytorch: {t_pt / t_ort:.2f}x  {label}")
    detections = sum(len(a["labels"]) for a in pytorch())
    print(f"same detections on {len(same)}/{len(images)} images ({detections} detections), there: max box "
          f"difference {max((p[0] for p in same), default=0):.2g} px, max score difference "
          f"{max((p[1] for p in same), default=0):.2g}")
    if not args.checkpoint:
        print("(random weights fill detections_per_img with near-equal scores at the cut, where an image may differ)")


if __name__ == "__main__":
    main()
