"""What a new user sees first: --version, the help screens, and stderr that holds only fcos-exp's own lines."""
import os
import subprocess
import sys

import pytest
from conftest import run_cli

COMMANDS = ("prepare", "train", "evaluate", "visualize", "predict", "tune", "report", "sync", "use")


def test_version_names_the_package_and_the_torch_stack():
    r = run_cli("--version")
    assert r.exit_code == 0
    import torch
    import torchvision
    assert r.stdout.startswith("fcos-exp ") and f"torch {torch.__version__}" in r.stdout
    assert f"torchvision {torchvision.__version__}" in r.stdout and ("CUDA" in r.stdout)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_screens_render_like_typer_help(command):
    r = run_cli(*([command] if command else []), "--help")
    assert r.exit_code == 0
    assert "<bool>" not in r.stdout and "Show this message and exit." in r.stdout
    if command is None:
        assert all(c in r.stdout for c in COMMANDS) and "--version" in r.stdout
    elif command not in ("use", "predict"):
        assert "--params" in r.stdout


def test_stderr_holds_no_mlflow_logging(project, tmp_path):
    """A fresh sqlite store is migrated on first use; MLflow's INFO lines about it stay out of stderr."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh.db'}", "NO_COLOR": "1"}
    for stage in ("prepare", "train"):
        r = subprocess.run([sys.executable, "-m", "pipeline", stage], cwd=project, capture_output=True, text=True,
                           env=env, timeout=600)
        assert r.returncode == 0, r.stderr
        assert "INFO" not in r.stderr and "mlflow.store" not in r.stderr, r.stderr
