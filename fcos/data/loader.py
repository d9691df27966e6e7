"""Data loaders: a collate that keeps per-image targets, seeded shuffling, DDP sampling and sharding."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """[(image, target), ...] -> (list of images, list of targets): images keep their own sizes."""
    images, targets = zip(*batch)
    return list(images), list(targets)


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
    `loader.sampler.set_epoch(e)` every epoch. shard=True (evaluation under DDP): `ShardSampler`."""
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shard and torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = ShardSampler(dataset, torch.distributed.get_rank(), torch.distributed.get_world_size())
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, collate_fn=collate, drop_last=drop_last, generator=generator,
                      worker_init_fn=_seed_worker, persistent_workers=False, pin_memory=torch.cuda.is_available())
