"""Where a result came from: the project root (also inside DVC's experiment copies), the git commit and the
hash of the prepared dataset."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def project_root() -> Path:
    """The repository root, also from inside DVC's temporary experiment copies (<root>/.dvc/tmp/exps/...):
    DVC passes the parent repo as DVC_ROOT to the stages it runs."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=project_root()).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dataset_hash() -> str:
    """The md5 of the prepare stage's output in dvc.lock (the data the run trained on)."""
    lock = Path("dvc.lock")
    if not lock.is_file():
        return "unknown"
    import yaml
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except yaml.YAMLError:
        return "unknown"
    for out in stages.get("prepare", {}).get("outs", []):
        if out.get("path") == "data/prepared":
            return str(out.get("md5", "unknown"))
    return "unknown"
