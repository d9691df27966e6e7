"""models/mlflow_run.json: the run of the last `fcos-exp train` in this folder and the store it lives in,
which evaluate and visualize log into (also when MLFLOW_TRACKING_URI has changed since)."""
from __future__ import annotations

import json

from fcos.files import atomic_write

from ..paths import RUN_FILE


def write_run_file(run_id: str, uri: str) -> None:
    with atomic_write(RUN_FILE) as f:
        f.write(json.dumps({"run_id": run_id, "tracking_uri": uri}))


def last_run() -> tuple[str, str | None] | None:
    """(run id, tracking URI) of the last `fcos-exp train` in this folder, if any."""
    from ..params import read_text_file  # a pipe there is refused, not waited on
    try:
        saved = json.loads(read_text_file(RUN_FILE))
        return str(saved["run_id"]), saved.get("tracking_uri")
    except (OSError, ValueError, KeyError, TypeError):
        return None
