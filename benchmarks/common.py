"""Helpers for the benchmarks: interleaved timing (the host's speed drifts up to 2x) and the CPU's peak."""
from __future__ import annotations

import statistics
import time

import torch


def matmul_peak_gflops(seconds: float = 2.0) -> float:
    """Achieved float32 GFLOP/s of a large matmul on this machine: the ceiling to compare against."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 2048 ** 3 * n / (time.perf_counter() - start) / 1e9


def flops(fn) -> float:
    """FLOPs of one call of fn, counted by torch's FlopCounterMode (convolutions, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def interleave(candidates: dict, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each candidate once per round after `warmup` untimed rounds, starting each round one candidate
    later (A B C, B C A, C A B, ...) so that no candidate always runs first."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(warmup + rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = candidates[name]
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def cpu_name() -> str:
    """The CPU model (lscpu's "Model name", else platform.processor()) and the cores torch uses."""
    import platform
    import subprocess
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    except (OSError, subprocess.SubprocessError):
        name = ""
    return f"{name or platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"
