"""Datasets (VOC, COCO, the embedded shapes generator), image loading, checks and loaders."""
from .coco import CocoDataset, read_coco, write_coco, write_coco_gt
from .dataset import DetectionDataset, Record, hflip
from .errors import DataError, DataReport
from .images import load_image, to_tensor
from .loader import build_loader, collate
from .shapes import SHAPES_CLASSES, generate_shapes
from .voc import VOC_CLASSES, VOCDataset, read_voc

__all__ = ["CocoDataset", "DataError", "DataReport", "DetectionDataset", "Record", "SHAPES_CLASSES",
           "VOC_CLASSES", "VOCDataset", "build_loader", "collate", "generate_shapes", "hflip", "load_image",
           "read_coco", "read_voc", "to_tensor", "write_coco", "write_coco_gt"]
