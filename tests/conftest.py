"""Shared fixtures: the real VOC sample in ../shared, seeded torch, small thread counts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VOC_SAMPLE = ROOT.parent / "shared" / "data" / "voc2007-sample" / "VOCdevkit" / "VOC2007"

# No telemetry and no network from the tracking tools in tests.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def voc_sample() -> Path:
    """The 100 genuine VOC2007 images with their annotations, read in place (never copied)."""
    if not (VOC_SAMPLE / "Annotations").is_dir():
        pytest.skip(f"real VOC sample not found at {VOC_SAMPLE} (it lives in ../shared/data beside the repo)")
    return VOC_SAMPLE


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(0)
    yield
