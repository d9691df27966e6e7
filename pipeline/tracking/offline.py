"""The offline queue: tracking operations kept in models/mlflow_pending.jsonl while MLflow is unreachable,
and `fcos-exp sync`, which replays them in order."""
from __future__ import annotations

import json
import os
from pathlib import Path

from fcos.files import atomic_write

from ..errors import UserError
from ..paths import PENDING_FILE
from .ops import apply, create_run, run_exists
from .runfile import last_run_id, write_run_file
from .store import client, tracking_uri


def append_pending(run_id: str, op: str, payload) -> None:
    PENDING_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(PENDING_FILE, "a") as f:
        f.write(json.dumps({"run": run_id, "op": op, "payload": payload}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read(path: Path) -> list[dict]:
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rec = json.loads(line) if line.strip() else None
        except ValueError:
            rec = None
        if line.strip() and not (isinstance(rec, dict) and {"run", "op", "payload"} <= set(rec)):
            raise UserError(f"{path}: line {n} is not a pending tracking operation")
        if rec:
            records.append(rec)
    return records


def sync_pending(path: Path | None = None) -> tuple[int, dict[str, str], int]:
    """Send the operations kept while MLflow was unreachable, in order. Runs created offline get their real
    id, also in what is left when a send fails (so a later sync goes on from there). Operations of a run
    that no longer exists are dropped and counted. Returns (sent, {pending id: real id}, dropped); the file
    is removed once all are sent. UserError when the server cannot be reached."""
    path = Path(path or PENDING_FILE)
    if not path.is_file():
        return 0, {}, 0
    records = _read(path)
    c = client()
    ids: dict[str, str] = {}
    gone: set[str] = set()
    sent = dropped = 0
    for n, rec in enumerate(records):
        run = ids.get(rec["run"], rec["run"])
        try:
            if rec["op"] == "create":
                tags = {k: ids.get(v, v) for k, v in (rec["payload"].get("tags") or {}).items()}
                ids[rec["run"]] = create_run(c, {**rec["payload"], "tags": tags})
            elif run.startswith("pending-") or run in gone or not run_exists(c, run):
                gone.add(run)
                dropped += 1
                continue
            else:
                apply(c, run, rec["op"], rec["payload"])
            sent += 1
        except Exception as e:
            left = [{**r, "run": ids.get(r["run"], r["run"])} for r in records[n:]]
            with atomic_write(path) as f:
                f.write("".join(json.dumps(r) + "\n" for r in left))   # keep what is left, with real ids
            raise UserError(f"{tracking_uri()}: MLflow unreachable or refused the data ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:150] if str(e) else ''}); {len(left)} operations kept "
                            f"in {path}") from None
    path.unlink()
    saved = last_run_id()
    if saved in ids:
        write_run_file(ids[saved])
    return sent, ids, dropped
