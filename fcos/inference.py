"""`for_inference`: an eval copy of a model made fast without changing its detections (BatchNorm folded into
convolutions, channels_last memory, Winograd convolutions on CPU, optionally torch.compile).

Measured on a 2-core CPU (benchmarks/bench_model.py, batch-1 inference, before the model used Winograd):
channels_last is what pays most (oneDNN runs NHWC convolutions without reordering), folding BatchNorm saves
one pass over every backbone feature map: 1.10-1.19x over torchvision's FCOS (ResNet-18, 320 px).
`compile=True` (inductor with weight freezing) gave 1.16-1.33x in two interleaved runs, for a ~1 min compile
and one more per new padded input shape: it pays over a test split of thousands of images, not for a
handful. Winograd convolutions (fcos/winograd.py) come on top for wide layers on CPU.
bf16 autocast is emulated (10x slower) on CPUs without AVX512-BF16.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

from .winograd import use_winograd

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _norm_of(name: str) -> str:
    """The BatchNorm that follows a convolution in torchvision's ResNets: conv1 -> bn1, downsample.0 -> .1."""
    head, _, leaf = name.rpartition(".")
    norm = f"bn{leaf[4:]}" if leaf.startswith("conv") else str(int(leaf) + 1) if leaf.isdigit() else ""
    return f"{head}.{norm}" if head else norm


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every conv -> BatchNorm pair of `module` (eval statistics) into the convolution, in place, and
    put an Identity where the norm was. Returns the number of pairs folded."""
    if module.training:
        raise ValueError("fold_batchnorm needs eval mode: training BatchNorm uses batch statistics")
    modules = dict(module.named_modules())
    folded = 0
    for name, conv in modules.items():
        norm_name = _norm_of(name) if isinstance(conv, nn.Conv2d) and name else ""
        norm = modules.get(norm_name)
        if not isinstance(norm, _NORMS):
            continue
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                      norm.eps, norm.weight, norm.bias)
        parent, _, leaf = norm_name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, nn.Identity())
        folded += 1
    return folded


@torch.no_grad()
def for_inference(model: nn.Module, channels_last: bool = True, compile: bool = False,
                  winograd: bool | str = "auto") -> nn.Module:
    """An eval-mode copy of an FCOS model made for inference: backbone BatchNorm folded into its
    convolutions, by default weights in channels_last and, for a model on the CPU, 3x3 convolutions as
    Winograd (float32 only, see fcos/winograd.py; on CUDA cuDNN picks its own algorithm), and optionally
    backbone and head compiled by torch.compile (inductor, weights frozen as constants). `winograd`: "auto"
    runs Winograd on each input shape where timing on its first call found it faster (convolutions with >= 64
    channels; direct under `compile`, which cannot time), True on every eligible input (>= 256 channels),
    False never. Detections equal the original's up to float rounding. The copy has no BatchNorm
    parameters: train and checkpoint the original."""
    if winograd not in ("auto", True, False):
        raise ValueError(f"winograd must be 'auto', True or False, got {winograd!r}")
    fast = copy.deepcopy(model).eval()   # .eval() again: deepcopy of an fx GraphModule comes back in train mode
    fold_batchnorm(fast.backbone)
    auto = winograd == "auto"
    if next(fast.parameters()).device.type == "cpu" and (winograd is True or (auto and not compile)):
        use_winograd(fast, min_channels=64 if auto else 256, autotune=auto)
    if channels_last:
        fast.to(memory_format=torch.channels_last)
    if compile:
        fast.backbone = torch.compile(fast.backbone, options={"freezing": True})
        fast.head = torch.compile(fast.head, options={"freezing": True})
    return fast
