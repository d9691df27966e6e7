"""Data loaders: a collate that keeps per-image targets, seeded shuffling, DDP sampling and sharding."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

_ALIGN = 64   # bytes: where each tensor starts in a packed buffer, as torch's CPU allocator aligns its own


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """[(image, target), ...] -> (list of images, list of targets): images keep their own sizes. In a loader
    worker the batch leaves packed (`Packed`), and the process that receives it gets the same lists."""
    images, targets = zip(*batch)
    if get_worker_info() is None:
        return list(images), list(targets)
    return Packed(list(images), list(targets))


class Packed:
    """A batch on its way from a loader worker: every tensor of one dtype (the images, the boxes of all
    targets, ...) copied into one buffer in shared memory. The receiving process rebuilds a tensor from a file
    descriptor per tensor sent (about 0.3 ms each, under the GIL the training loop needs), so a batch of 32
    sends 3 instead of 160; unpickling gives back (images, targets) with each tensor a view of its buffer,
    same values, shape and strides. Anything else in the batch travels as it is."""

    def __init__(self, images: list, targets: list[dict]):
        tensors = [x for x in (*images, *(v for t in targets for v in t.values())) if isinstance(x, torch.Tensor)]
        sizes: dict[torch.dtype, int] = {}   # dtype -> elements of its buffer so far
        self.slots = []                      # per tensor: (dtype, offset, shape, strides)
        for t in tensors:
            step = max(1, _ALIGN // t.element_size())
            offset = -(-sizes.get(t.dtype, 0) // step) * step
            sizes[t.dtype] = offset + t.numel()
            strides = torch.empty_like(t, device="meta").stride()   # t's own when dense, else contiguous ones
            self.slots.append((t.dtype, offset, tuple(t.shape), strides))
        self.buffers = {dtype: _shared_empty(n, dtype) for dtype, n in sizes.items()}
        for t, slot in zip(tensors, self.slots, strict=True):
            _view(self.buffers, slot).copy_(t)
        # The batch with each tensor replaced by the _TENSOR marker (a string survives pickling).
        self.images = [_TENSOR if isinstance(x, torch.Tensor) else x for x in images]
        self.targets = [{k: _TENSOR if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]

    def __reduce__(self):
        return _unpack, (self.buffers, self.slots, self.images, self.targets)


_TENSOR = "fcos.data.loader.Packed: a tensor"


def _marked(x) -> bool:
    return isinstance(x, str) and x == _TENSOR


def _shared_empty(n: int, dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor in shared memory (as torch's default_collate makes in workers: sending it copies
    nothing more)."""
    like = torch.empty(0, dtype=dtype)
    return like.new(like._typed_storage()._new_shared(n))


def _view(buffers: dict, slot: tuple) -> torch.Tensor:
    dtype, offset, shape, strides = slot
    return buffers[dtype].as_strided(shape, strides, offset)


def _unpack(buffers: dict, slots: list, images: list, targets: list[dict]) -> tuple[list, list[dict]]:
    tensors = iter([_view(buffers, slot) for slot in slots])
    images = [next(tensors) if _marked(x) else x for x in images]
    targets = [{k: next(tensors) if _marked(v) else v for k, v in t.items()} for t in targets]
    return images, targets


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32   # torch seeds each worker from the loader's generator
    np.random.seed(seed)
    random.seed(seed)


class ShardSampler(Sampler[int]):
    """Evaluation under DDP: rank r reads images r, r + world, r + 2 world, ... in order. Unlike
    DistributedSampler nothing is padded, so every image is scored exactly once over all ranks."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int):
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, num_workers: int = 0,
                 seed: int = 0, distributed: bool = False, shard: bool = False,
                 drop_last: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentation are reproducible from `seed`. distributed=True (training
    under DDP): each rank reads its own equal-sized shard (DistributedSampler); call
    `loader.sampler.set_epoch(e)` every epoch. shard=True (evaluation under DDP): `ShardSampler`.
    Workers start afresh every epoch: persistent ones would carry their random state (the flips) from
    epoch to epoch, which a resumed training, starting them anew, could not reproduce."""
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shard and torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = ShardSampler(dataset, torch.distributed.get_rank(), torch.distributed.get_world_size())
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, collate_fn=collate, drop_last=drop_last, generator=generator,
                      worker_init_fn=_seed_worker, persistent_workers=False, pin_memory=torch.cuda.is_available())
