"""Shared fixtures: the real VOC sample in ../shared, seeded torch, small thread counts."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DURATIONS = ROOT / "tests" / "durations.json"   # seconds per test file in a recorded run (--record-durations)
_SECONDS_SEEN: Counter = Counter()                # this run's, by file (setup, call and teardown)
VOC_SAMPLE = ROOT.parent / "shared" / "data" / "voc2007-sample" / "VOCdevkit" / "VOC2007"
VOC_MINI = ROOT / "tests" / "data" / "voc2007-mini" / "VOCdevkit" / "VOC2007"   # shipped: 12 of those images

# Under pytest-xdist (`-n 2`, .ci/run) each worker and the processes its tests start get one thread: two
# workers of 2 OpenMP threads each on 2 cores run several times slower than one. Set before torch loads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

# No telemetry and no network from the tracking tools in tests.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def pytest_addoption(parser):
    parser.addoption("--record-durations", action="store_true",
                     help=f"write each test file's seconds in this run to {DURATIONS.relative_to(ROOT)}")


def pytest_configure(config):
    """pytest-xdist's per-file scheduling (--dist loadfile) hands out files in collection order, not by
    its default count of tests per file: a long file with one test came last and the other worker idled."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _file(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_collection_modifyitems(config, items):
    """The heaviest files (as last recorded in tests/durations.json) first, each file's order kept."""
    weights = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    items.sort(key=lambda item: -weights.get(_file(item.nodeid), 0))


def pytest_runtest_logreport(report):
    _SECONDS_SEEN[_file(report.nodeid)] += report.duration


def pytest_sessionfinish(session):
    config = session.config
    if config.getoption("record_durations") and not hasattr(config, "workerinput"):   # the controller only
        seconds = {f: round(s) for f, s in sorted(_SECONDS_SEEN.items(), key=lambda kv: -kv[1])}
        DURATIONS.write_text(json.dumps(seconds, indent=1) + "\n")


@pytest.fixture(scope="session")
def voc_sample() -> Path:
    """Genuine VOC2007 images with their annotations, read in place (never copied): the 100-image sample in
    ../shared/data where this project's CI has it, else the 12 shipped in tests/data (a user's clone)."""
    if os.environ.get("FCOS_EXP_TEST_VOC") == "mini" or not (VOC_SAMPLE / "Annotations").is_dir():
        return VOC_MINI
    return VOC_SAMPLE


@pytest.fixture(scope="session")
def voc_mini() -> Path:
    """12 genuine VOC2007 images (8 trainval, 4 test) shipped with the repository (tests/data/voc2007-mini)."""
    return VOC_MINI


@pytest.fixture(scope="session", autouse=True)
def _winograd_cache(tmp_path_factory):
    """Winograd timing decisions (fcos.winograd.cache_path) go to a session folder, never the user's home;
    processes the tests start inherit it."""
    os.environ["FCOS_EXP_CACHE"] = str(tmp_path_factory.mktemp("fcos-exp-cache"))


@pytest.fixture(autouse=True)
def _seed_torch():
    import torch

    torch.manual_seed(0)
    yield


def tiny_params(**overrides) -> dict:
    """The real params.yaml shrunk to a seconds-long run; overrides: {"train": {"epochs": 2}, ...}."""
    import copy

    import yaml

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    # seed 1: its 2 validation images hold boxes (seed 0's are both empty, where validation AP is undefined)
    p["data"]["shapes"].update(num_trainval=14, num_test=4, image_size=96, seed=1)
    p["data"]["val_fraction"] = 0.15
    p["model"].update(fpn_channels=16, gn_groups=8, head_convs=1, min_size=64, max_size=96)
    p["train"].update(epochs=1, batch_size=4, warmup_epochs=0.5, amp="none")   # float32: bit-reproducible
    p["eval"]["batch_size"] = 4
    p["visualize"]["num_images"] = 2
    p["tracking"]["experiment"] = "tests"
    p = copy.deepcopy(p)
    for section, values in overrides.items():
        if isinstance(values, dict):
            p.setdefault(section, {}).update(values)
        else:
            p[section] = values
    return p


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One sqlite MLflow store for the session (its first migration costs seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


@pytest.fixture
def project(tmp_path, monkeypatch, tracking_uri):
    """A working directory holding a tiny params.yaml; commands run there as a user would."""
    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    return tmp_path


def run_cli(*args: str):
    """Invoke `fcos-exp ARGS` in-process; returns typer's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    return CliRunner().invoke(app, list(args))


def pause_env(folder: Path, step: int) -> tuple[dict, Path]:
    """An environment in which training stops after global step `step` until the returned file exists
    (tests/pause_callback.py, added through FCOS_EXP_CALLBACKS): tests act at a point they choose, however
    fast the machine is."""
    release = folder / f"release-step-{step}"
    path = os.pathsep.join(filter(None, (str(ROOT / "tests"), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "FCOS_EXP_CALLBACKS": "pause_callback:from_env", "FCOS_EXP_TEST_PAUSE": f"{step}:{release}",
            "PYTHONPATH": path}, release


@pytest.fixture
def reap():
    """`reap(proc)`: a process the test started is killed at its end, even when the test fails while the
    process is paused (pause_env) and would wait forever."""
    procs = []
    yield procs.append
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_paused(proc, release: Path, limit: float = 900) -> None:
    """Return once training in `proc` (started with `pause_env`) is paused; fail if `proc` ends first.
    `limit` only guards against a hang: the outcome never depends on the machine's speed."""
    import time

    reached, deadline = Path(f"{release}.reached"), time.monotonic() + limit
    while not reached.exists():
        assert proc.poll() is None, f"the process ended (exit {proc.returncode}) before training paused"
        assert time.monotonic() < deadline, f"training did not pause within {limit} s"
        time.sleep(0.1)


def git_project(dst: Path, params: dict) -> Path:
    """The project's files as in the working tree (tracked and new; no pipeline outputs), with `params`
    as params.yaml, committed to a fresh git repository at dst."""
    import shutil
    import subprocess

    import yaml

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        outputs = f.startswith(("data/prepared", "models/model.pt", "metrics/", "plots/")) or f == "dvc.lock"
        if (ROOT / f).is_file() and not outputs:
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=dst, check=True)
    return dst
