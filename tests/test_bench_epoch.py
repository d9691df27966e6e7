"""benchmarks/bench_epoch.py: its generated dataset (benchmarks/voc_jpegs.py) is a VOC folder the project
reads without a problem, and a small run goes end to end and writes sane figures for both recipes (the speed
itself is the benchmark's)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fcos.data import VOC_CLASSES, DataReport, read_voc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from voc_jpegs import generate  # noqa: E402


def test_generated_dataset_is_voc_sized_and_reads_cleanly(tmp_path):
    root, info = generate(tmp_path, 12, seed=3)
    report = DataReport()
    records, classes = read_voc(root, "trainval", report=report, check_images=True)
    assert not report.counts and classes == VOC_CLASSES and len(records) == info["images"] == 12
    for r in records:
        assert sorted((r.width, r.height)) in ([s, 500] for s in range(281, 376))
        assert 2 <= len(r.boxes) <= 3 and (r.boxes[:, 2:] > r.boxes[:, :2]).all()
        assert Image.open(r.file).format == "JPEG"
    assert 20 < info["mean_kb"] < 200
    again, info = generate(tmp_path, 12, seed=3)
    assert info["reused"] and again == root


@pytest.mark.slow
def test_small_run_writes_sane_figures(tmp_path):
    out = tmp_path / "epoch.json"
    run = subprocess.run([sys.executable, "benchmarks/bench_epoch.py", "--small", "--images", "8", "--workers", "2",
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"].startswith("cpu") and not report["cuda"] and report["small"]
    assert not report["errors"] and not report["skipped"] and report["workers"] == [2]
    assert set(report["configs"]) == {"voc07_resnet18", "voc07_well_trained"}
    for row in report["configs"].values():
        runs = [row["step_alone"], *row["epochs"]]
        assert [e["num_workers"] for e in row["epochs"]] == [2]
        for r in runs:
            for recipe in ("fcos-exp", "torchvision"):
                figures = r[recipe]
                assert figures["images"] == 8 and figures["images_per_s"] > 0
                assert 0 <= figures["idle_share"] <= 1 and 0 <= figures["data_wait_share"] <= 1
        assert row["step_alone"]["fcos-exp"]["data_wait_share"] < row["epochs"][0]["fcos-exp"]["data_wait_share"]
        assert row["epochs"][0]["speedup_vs_torchvision"] > 0
    assert set(report["goals"]) >= {"epoch_min_speedup_vs_torchvision", "fed_within_10pct_met"}
