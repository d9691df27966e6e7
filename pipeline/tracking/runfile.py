"""models/mlflow_run.json: the run of the last `fcos-exp train` in this folder, which evaluate and visualize
log into."""
from __future__ import annotations

import json

from fcos.files import atomic_write

from ..paths import RUN_FILE
from .store import tracking_uri


def write_run_file(run_id: str) -> None:
    with atomic_write(RUN_FILE) as f:
        f.write(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri()}))


def last_run_id() -> str | None:
    """The run of the last `fcos-exp train` in this folder, if any."""
    try:
        return json.loads(RUN_FILE.read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
