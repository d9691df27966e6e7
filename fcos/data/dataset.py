"""`DetectionDataset`: images and boxes held as records, the items every reader returns."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import load_image, to_tensor


@dataclass
class Record:
    """One image: boxes [N, 4] x1y1x2y2 in pixels (float32), labels [N] (int64), flags [N] (bool)."""

    image_id: int
    file: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    iscrowd: np.ndarray


def empty_record(image_id: int, file: Path, width: int, height: int) -> Record:
    return Record(image_id, file, width, height, np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                  np.zeros(0, bool), np.zeros(0, bool))


class DetectionDataset(Dataset):
    """Items: (image float32 [3, H, W] in [0, 1], {"boxes" [N, 4], "labels" [N], "image_id",
    "difficult" [N], "iscrowd" [N]}). With train=True crowd boxes (and difficult ones unless
    use_difficult) are dropped and images are flipped horizontally with probability flip_prob."""

    def __init__(self, records: list[Record], classes: list[str], cat_ids: list[int], *, train: bool = False,
                 use_difficult: bool = True, flip_prob: float = 0.5):
        self.records, self.classes, self.cat_ids = records, list(classes), list(cat_ids)
        self.train, self.use_difficult, self.flip_prob = train, use_difficult, flip_prob

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        img = load_image(r.file)
        keep = np.ones(len(r.labels), bool)
        if self.train:
            keep &= ~r.iscrowd
            if not self.use_difficult:
                keep &= ~r.difficult
        boxes = torch.from_numpy(r.boxes[keep].astype(np.float32)).reshape(-1, 4)
        sx, sy = img.width / r.width, img.height / r.height   # annotation size vs decoded size
        if sx != 1 or sy != 1:
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
        if self.train and torch.rand(()) < self.flip_prob:  # torch RNG: seeded per worker by the loader
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)   # on the bytes: 4x fewer than the floats
            boxes = hflip_boxes(boxes, img.width)
        target = {"boxes": boxes, "labels": torch.from_numpy(r.labels[keep].astype(np.int64)),
                  "image_id": r.image_id, "difficult": torch.from_numpy(r.difficult[keep]),
                  "iscrowd": torch.from_numpy(r.iscrowd[keep])}
        return to_tensor(img), target


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror image [3, H, W] and boxes [N, 4] left-right."""
    return image.flip(-1), hflip_boxes(boxes, image.shape[-1])


def hflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Boxes [N, 4] x1y1x2y2 of an image `width` pixels wide, mirrored left-right."""
    return torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)
