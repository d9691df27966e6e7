"""Helpers for the benchmarks: interleaved timing (the host's speed drifts up to 2x), the CPU's label and its
float32 and bfloat16 peaks."""
from __future__ import annotations

import os
import re
import statistics
import time

import torch
import torch.nn.functional as F

from fcos.winograd import KERNEL_CAPS, cpu_info

ISA_FLAGS = {"avx2": "avx2", "avx512f": "avx512f", "avx512_bf16": "avx512_bf16", "avx512_fp16": "avx512_fp16",
             "amx_bf16": "amx"}   # /proc/cpuinfo flag -> label (amx_bf16 comes with amx_tile)


def cpu_label() -> str:
    """`[CPU model; the ISA flags that matter here; torch threads]`, for headers and beside every ratio."""
    name, flags = cpu_info()
    name = " ".join(re.sub(r"\((R|TM)\)|\b(CPU|Processor)\b", " ", name, flags=re.I).split())
    isa = " ".join(label for flag, label in ISA_FLAGS.items() if flag in flags) or "no AVX2"
    caps = [f"{k}={os.environ[k]}" for k in KERNEL_CAPS if os.environ.get(k)]
    if caps:   # kernels held to an older ISA: this CPU standing in for another kind
        isa += f"; kernels capped: {' '.join(caps)}"
    return f"[{name}; {isa}; {torch.get_num_threads()} threads]"


def _kernels(dtype: torch.dtype) -> dict:
    """Kernels a CPU runs near its peak in `dtype`: (FLOPs, fn) by name; matmuls (float32: MKL; bfloat16:
    oneDNN) and large oneDNN convolutions, NCHW and channels_last."""
    out = {}
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out[f"mm {n}"] = (2 * n ** 3, lambda a=a, b=b: torch.mm(a, b))
    for k, c in ((1, 512), (3, 256)):
        w = torch.randn(c, c, k, k, dtype=dtype)
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(1, c, 64, 64, dtype=dtype).contiguous(memory_format=layout)
            wl = w.contiguous(memory_format=layout)
            name = f"conv{k}x{k} {c}ch 64x64 {'nhwc' if layout == torch.channels_last else 'nchw'}"
            out[name] = (2 * c * c * k * k * 64 * 64, lambda x=x, w=wl, p=k // 2: F.conv2d(x, w, padding=p))
    return out


@torch.inference_mode()
def peak_gflops(dtype: torch.dtype = torch.float32, repeats: int = 3, clock=time.perf_counter) -> tuple[float, str]:
    """The best GFLOP/s of `_kernels(dtype)` on this machine (each: a warm-up call, then the fastest of
    `repeats`, timed by `clock` as `interleave` times) and the kernel that gave it: the ceiling to compare a
    model's `dtype` path against."""
    best = (0.0, "")
    for name, (n_flops, fn) in _kernels(dtype).items():
        fn()
        seconds = []
        for _ in range(repeats):
            start = clock()
            fn()
            seconds.append(clock() - start)
        best = max(best, (n_flops / min(seconds) / 1e9, name))
    return best


def flops(fn) -> float:
    """FLOPs of one call of fn, counted by torch's FlopCounterMode (convolutions, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def interleave(candidates: dict, rounds: int, warmup: int = 1, clock=time.perf_counter) -> dict[str, list[float]]:
    """Time each candidate once per round after `warmup` untimed rounds, starting each round one candidate
    later (A B C, B C A, C A B, ...) so that no candidate always runs first. `clock`: the wall clock, or
    time.process_time on a loaded machine (one thread: the CPU time this process got, not the others')."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(warmup + rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = candidates[name]
            start = clock()
            fn()
            if r >= warmup:
                times[name].append(clock() - start)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)
