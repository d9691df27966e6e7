"""Winograd F(4x4, 3x3) convolution for float32 inference on CPU (Lavin & Gray, 2015), chosen per shape by
timing on this machine; the transforms and the decisions file that training's Winograd
(fcos/winograd_train.py) shares.

Why our own: PyTorch's CPU convolution asks oneDNN for the direct algorithm (oneDNN's own Winograd exists
only for AVX512 CPUs); NNPACK's Winograd is reachable only through a private torch op, which failed on this
machine unless another convolution had run first. Here each 6x6 input tile is transformed by one small
matmul, the convolution becomes 36 matmuls [tiles, C] x [C, O] (4x fewer multiplications than direct 3x3),
and a second small matmul maps back to 4x4 output tiles. Outputs differ from direct convolution by float
rounding (about 5x the direct convolution's, tests/test_winograd.py). With gradients on, `WinogradConv2d`
is the direct convolution; training's Winograd is fcos/winograd_train.py, a Function with its own backward
over all FPN levels at once (through plain autograd it lost on small and large maps).

Why timed: whether it wins depends on the CPU far more than on the layer (on some CPUs it made the whole
model faster, on others slower: benchmarks/bench_model.py, bench_winograd.py). So `autotune` layers do what
cudnn.benchmark does: on the first call with a new (batch, C, O, H, W, threads, layout), they time the direct
convolution and Winograd on that input and take Winograd only when it is at least `MARGIN` faster (a
near-tie keeps the direct convolution, the reference result). The decisions are shared by every layer of the
process and kept in a JSON file per CPU model and torch version (`ShapeChoices`: under $FCOS_EXP_CACHE, else
~/.cache/fcos-exp), so that later processes on the machine (evaluate, visualize, predict, a second
`dvc repro`) make the same choice and give the same detections; an unreadable file is ignored, an
unwritable folder keeps the decisions in the process.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .files import atomic_write

# F(4x4, 3x3): input transform B^T [6, 6], kernel transform G [6, 3], output transform A^T [4, 6].
_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
_M, _A = 4, 6   # output tile, input tile
TILE_BUDGET = 256   # tiles per chunk: big maps run ~1.3x faster in chunks that stay in cache
MARGIN = 1.05       # autotune: Winograd only when direct time / Winograd time >= MARGIN
REPEATS = 5         # autotune: timed calls of each, interleaved, after one warm-up call; the minimum counts


@functools.cache
def transform_matrices(dtype: torch.dtype, device: torch.device, kron: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Input B^T [6, 6], kernel G [6, 3], output A^T [4, 6]; with `kron` their 2-D forms as Kronecker
    products, one matmul per tile: B^T (x) B^T [36, 36], G (x) G [36, 9], A^T (x) A^T [16, 36] (built in
    float64, then cast)."""
    with torch.inference_mode(False):   # cached for every later call: never an inference tensor, which
        # autograd refuses once training follows an evaluation in the same process
        mats = [torch.tensor(m, dtype=torch.float64) for m in (_BT, _G, _AT)]
        return tuple((torch.kron(t, t) if kron else t).to(dtype=dtype, device=device) for t in mats)


def winograd_kernel(weight: Tensor) -> Tensor:
    """G w G^T of a 3x3 kernel [O, C, 3, 3] -> [36, C, O], as one matmul (differentiable)."""
    o, c = weight.shape[:2]
    gg = transform_matrices(weight.dtype, weight.device)[1]
    return (gg @ weight.permute(2, 3, 1, 0).reshape(9, c * o)).view(_A * _A, c, o)


def cpu_info() -> tuple[str, list[str]]:
    """The CPU model name and its flags (from /proc/cpuinfo; elsewhere platform's processor name, no flags)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "")
    return field("model name") or platform.processor() or platform.machine(), field("flags").split()


# set: ATen / oneDNN / MKL run an older ISA's kernels than the CPU has
KERNEL_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cache_path() -> Path:
    """The decisions file of this CPU model and torch version, under $FCOS_EXP_CACHE or ~/.cache/fcos-exp; the
    kernels' ISA is in the key too (the caps above), since it decides what is faster."""
    name, flags = cpu_info()
    caps = [os.environ.get(k, "") for k in KERNEL_CAPS]
    digest = hashlib.sha256(f"{name}|{' '.join(flags)}|{torch.__version__}|{caps}".encode()).hexdigest()[:16]
    folder = os.environ.get("FCOS_EXP_CACHE") or Path.home() / ".cache" / "fcos-exp"
    return Path(folder) / f"winograd-{digest}.json"


def _read(path: Path) -> dict[str, bool]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):   # missing, unreadable or corrupt: as if empty
        return {}
    return {k: v for k, v in data.items() if isinstance(v, bool)} if isinstance(data, dict) else {}


class ShapeChoices:
    """Winograd (True) or direct (False) per shape key, read from and written to a JSON file (`cache_path()`
    at first use when `path` is None). Writes are atomic and merge what other processes wrote meanwhile."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.choices: dict[str, bool] | None = None

    def _loaded(self) -> dict[str, bool]:
        if self.choices is None:
            self.path = self.path or cache_path()
            self.choices = _read(self.path)
        return self.choices

    def get(self, key: str) -> bool | None:
        return self._loaded().get(key)

    def put(self, key: str, winograd: bool) -> None:
        mine = {**self._loaded(), key: winograd}   # this process's decisions win: a layer never changes its mind
        self.choices = {**_read(self.path), **mine}
        try:
            with atomic_write(self.path) as f:
                json.dump(self.choices, f, indent=1, sort_keys=True)
        except OSError:   # an unwritable folder: the decisions last as long as the process
            pass


CHOICES = ShapeChoices()   # shared by every autotuned layer of the process


def _is_3x3_same(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def _min_times(fns, x: Tensor) -> list[float]:
    """The shortest of REPEATS timed calls of each of `fns` on x, after a warm-up call each; interleaved, each
    round in the other order. With one thread by the thread's CPU time (what other processes on the machine
    take from it does not count), else by the wall clock."""
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    times = [float("inf")] * len(fns)
    for r in range(REPEATS + 1):
        for i in range(len(fns))[::1 if r % 2 else -1]:
            start = clock()
            fns[i](x)
            if r:
                times[i] = min(times[i], clock() - start)
    return times


class WinogradConv2d(nn.Conv2d):
    """An nn.Conv2d (3x3, stride 1, padding 1; same parameters and state_dict) that runs F(4x4, 3x3) for
    float32 CPU inputs of at least `min_pixels` (H * W) with gradients off and outside autocast, and the
    direct convolution otherwise (training; CUDA, where cuDNN picks its own algorithm; small maps; other
    dtypes). With `autotune`, each input shape takes whichever of the two `CHOICES` holds for it, timed on
    its first call. The transformed kernel is kept until the weight changes."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, min_pixels: int = 256,
                 autotune: bool = False, device=None):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias, device=device)
        self.min_pixels, self.autotune = min_pixels, autotune
        self._kernel_cache: tuple | None = None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, min_pixels: int = 256, autotune: bool = False) -> WinogradConv2d:
        """A WinogradConv2d sharing `conv`'s weight and bias Parameters."""
        if not _is_3x3_same(conv):
            raise ValueError(f"WinogradConv2d needs a 3x3 stride-1 padding-1 convolution, got {conv}")
        new = cls(conv.in_channels, conv.out_channels, conv.bias is not None, min_pixels, autotune, conv.weight.device)
        new.weight, new.bias = conv.weight, conv.bias
        return new

    def _kernel(self) -> Tensor:
        """G w G^T per (out, in) pair: [36, C, O], recomputed when the weight changes (in place or replaced)."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.device)
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            self._kernel_cache = (key, winograd_kernel(w.detach()))
        return self._kernel_cache[1]

    def _winograd_wins(self, x: Tensor) -> bool:
        """The decision for x's shape in CHOICES, timed on x (and recorded) the first time."""
        b, c, h, w = x.shape
        layout = "nhwc" if x.is_contiguous(memory_format=torch.channels_last) else "nchw"
        key = f"b{b} c{c} o{self.out_channels} h{h} w{w} t{torch.get_num_threads()} {layout}"
        winograd = CHOICES.get(key)
        if winograd is None:
            direct, wino = _min_times((super().forward, self._winograd), x)
            winograd = direct >= MARGIN * wino
            CHOICES.put(key, winograd)
        return winograd

    def runs_winograd(self, x: Tensor) -> bool:
        """Whether forward(x) computes Winograd (with `autotune`, timing x's shape if it is new)."""
        h, w = x.shape[-2:]
        return not (torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32
                    or self.weight.dtype != torch.float32 or h * w < self.min_pixels
                    or torch.is_autocast_enabled("cpu")) and (not self.autotune or self._winograd_wins(x))

    def forward(self, x: Tensor) -> Tensor:
        return self._winograd(x) if self.runs_winograd(x) else super().forward(x)

    def _winograd(self, x: Tensor) -> Tensor:
        """F(4x4, 3x3) of a float32 CPU input [B, C, H, W], in chunks of at most TILE_BUDGET tiles."""
        b, c, h, w = x.shape
        u = self._kernel()
        bt, _, at = transform_matrices(x.dtype, x.device)
        th, tw = -(-h // _M), -(-w // _M)   # 4x4 output tiles per column / row
        xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, tw * _M + 1 - w, 1, th * _M + 1 - h))   # [B, 4th+2, 4tw+2, C]
        tiles = xp.unfold(1, _A, _M).unfold(2, _A, _M).flatten(0, 1)            # [B*th, tw, C, 6, 6] view
        step = max(1, TILE_BUDGET // tw)   # rows of tiles per chunk (not a loop over images or levels)
        out = []
        for r in range(0, b * th, step):
            t = tiles[r:r + step]
            v = (bt @ t.permute(3, 4, 0, 1, 2).reshape(_A * _A, -1)).view(_A * _A, -1, c)
            m = torch.bmm(v, u)                                                 # [36, rows*tw, O]
            y = (at @ m.view(_A * _A, -1)).view(_M, _M, t.shape[0], tw, -1)
            out.append(y.permute(2, 0, 3, 1, 4))                                # [rows, 4, tw, 4, O]
        y = torch.cat(out).view(b, th * _M, tw * _M, -1)[:, :h, :w]
        y = y + self.bias if self.bias is not None else y.contiguous()
        return y.permute(0, 3, 1, 2)   # [B, O, H, W], channels_last strides


def use_winograd(module: nn.Module, min_channels: int = 256, min_pixels: int = 256, autotune: bool = False) -> int:
    """Make every 3x3 stride-1 Conv2d (plain or a winograd_train.WinogradTrainConv2d) of `module` with at
    least `min_channels` input and output channels a WinogradConv2d sharing its Parameters, in place
    (`autotune`: each picks Winograd or direct per input shape by timing). Returns the number replaced."""
    targets = [(name, m) for name, m in module.named_modules() if name and isinstance(m, nn.Conv2d)
               and not isinstance(m, WinogradConv2d) and _is_3x3_same(m)
               and min(m.in_channels, m.out_channels) >= min_channels]
    for name, conv in targets:
        parent, _, leaf = name.rpartition(".")
        new = WinogradConv2d.from_conv(conv, min_pixels, autotune)
        setattr(module.get_submodule(parent) if parent else module, leaf, new)
    return len(targets)
