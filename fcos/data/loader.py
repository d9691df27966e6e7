"""Data loaders: a collate that keeps per-image targets, seeded shuffling, DDP sampling."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """[(image, target), ...] -> (list of images, list of targets): images keep their own sizes."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32   # torch seeds each worker from the loader's generator
    np.random.seed(seed)
    random.seed(seed)


def build_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, num_workers: int = 0,
                 seed: int = 0, distributed: bool = False, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentation are reproducible from `seed`. With distributed=True each
    rank reads its own shard (DistributedSampler); call `loader.sampler.set_epoch(e)` every epoch."""
    generator = torch.Generator().manual_seed(seed)
    sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last) if distributed else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, collate_fn=collate, drop_last=drop_last, generator=generator,
                      worker_init_fn=_seed_worker, persistent_workers=False, pin_memory=torch.cuda.is_available())
