"""The offline queue: tracking operations kept in models/mlflow_pending.jsonl while MLflow is unreachable,
each with the store it was meant for, and `fcos-exp sync`, which replays them in order. A sync stopped at any
point (Ctrl-C, SIGKILL) and run again creates no run twice and sends no model again. A training may go on
appending while a sync runs: the sync takes the queue (renamed to .sending under the queue's lock, which
appends hold too) and sends what it took; operations of an offline run whose create an earlier sync sent
reach the run it made."""
from __future__ import annotations

import fcntl
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from fcos.files import atomic_write

from ..errors import UserError
from ..paths import PENDING_FILE
from .ops import apply, create_run, refused, run_exists
from .runfile import last_run, write_run_file
from .store import client, sqlite_path, tracking_uri


def append_pending(run_id: str, op: str, payload, uri: str) -> None:
    with _locked_queue(PENDING_FILE) as f:
        f.write(json.dumps({"run": run_id, "op": op, "payload": payload, "uri": uri}) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def _locked_queue(path: Path):
    """The queue opened for appending under its lock (a sync takes or gives back the file under it), the file
    at `path` now: one a sync took meanwhile is let go and the new one opened."""
    from ..artifacts import open_append
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open_append(path) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield f
                return


def _sending(path: Path) -> Path:
    return path.with_name(path.name + ".sending")


def pending_steps(run_id: str, metric: str) -> list[int]:
    """Steps of `metric` kept for `run_id` (a pending or a real id), in the queue or taken by a sync."""
    steps = []
    for path in (_sending(PENDING_FILE), PENDING_FILE):
        for rec in _read(path) if path.is_file() else []:
            if rec["run"] == run_id and rec["op"] == "metrics":
                steps += [row[2] for row in rec["payload"] if row[0] == metric]
    return steps


def _read(path: Path, shown: Path | None = None) -> list[dict]:
    """The records of a queue file (`shown`: the name its problems are told under)."""
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rec = json.loads(line) if line.strip() else None
        except ValueError:
            rec = None
        if line.strip() and not (isinstance(rec, dict) and {"run", "op", "payload"} <= set(rec)):
            raise UserError(f"{shown or path}: line {n} is not a pending tracking operation")
        if rec:
            records.append(rec)
    return records


def _named(rec: dict, ids: dict[str, str]) -> dict:
    """rec with its run's real id; a "create" keeps its pending id, by which `_create_once` finds its run."""
    return rec if rec["op"] == "create" else {**rec, "run": ids.get(rec["run"], rec["run"])}


def sync_pending(path: Path | None = None) -> tuple[int, dict[str, str], int, list[str]]:
    """Send the operations kept while MLflow was unreachable, in order, each to the store it was meant for.
    A run created offline gets its real id at once, in models/mlflow_run.json too and in what is left when a
    send fails (so a later sync goes on from there). Operations of a run that no longer exists are dropped
    and counted, as are operations MLflow refuses as invalid (they would fail every time; the first is
    named on stderr). Returns (sent, {pending id: real id}, dropped, the stores sent to); the file is removed
    once all are sent. UserError when a store cannot be reached, or is a sqlite file whose folder is gone (a
    moved project: the store is not made again there, out of sight)."""
    queue = Path(path or PENDING_FILE)
    if queue.exists() and not queue.is_file():
        raise UserError(f"{queue}: not a regular file (a pipe, device, socket or folder)")
    path = _sending(queue)
    if not queue.is_file() and not path.is_file():
        return 0, {}, 0, []
    with _sync_lock(queue):
        try:
            return _send_all(queue, path)
        except BaseException:
            _give_back(queue, path)
            raise


@contextmanager
def _sync_lock(queue: Path):
    """One sync of a queue at a time."""
    from ..artifacts import open_append
    with open_append(queue.with_name(queue.name + ".sync-lock")) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{queue}: another `fcos-exp sync` is sending it; wait for it") from None
        yield


def _give_back(queue: Path, sending: Path) -> None:
    """What a sync took and did not send, back at the head of the queue (before what was appended since)."""
    if not sending.is_file():
        return
    with _locked_queue(queue):
        with atomic_write(queue) as f:
            f.write(sending.read_text() + queue.read_text())
        sending.unlink()


def _send_all(queue: Path, path: Path) -> tuple[int, dict[str, str], int, list[str]]:
    with _locked_queue(queue):   # take the queue; appends from now on start a new one
        taken = (path.read_text() if path.is_file() else "") + queue.read_text()
        with atomic_write(path) as f:
            f.write(taken)
        queue.unlink()
    records = _read(path, queue)
    clients: dict[str, object] = {}
    ids: dict[str, str] = {}
    gone: set[str] = set()
    sent = dropped = 0
    for n, rec in enumerate(records):
        run, uri = ids.get(rec["run"], rec["run"]), rec.get("uri") or tracking_uri()
        db = sqlite_path(uri) if isinstance(uri, str) else None
        if db is not None and not db.parent.is_dir():
            _keep(path, records[n:], ids)
            raise UserError(f"{db}: the MLflow store {len(records) - n} operations in {queue} were kept for is gone "
                            f"(no folder {db.parent}); set their \"uri\" to where it is now and run `fcos-exp sync` "
                            "again")
        try:
            c = clients.get(uri) or clients.setdefault(uri, client(uri))
            if rec["op"] == "create":
                ids[rec["run"]] = _create_once(c, rec, ids)
                if (last_run() or ("",))[0] == rec["run"]:
                    write_run_file(ids[rec["run"]], uri)   # evaluate and visualize then log into the real run
            elif run.startswith("pending-") and (real := _offline_run(c, run)):   # its create sent by an earlier sync
                ids[rec["run"]] = real
                apply(c, real, rec["op"], rec["payload"])
            elif run.startswith("pending-") or run in gone or not run_exists(c, run):
                gone.add(run)
                dropped += 1
                continue
            else:
                apply(c, run, rec["op"], rec["payload"])
            sent += 1
            if rec["op"] in NOT_IDEMPOTENT:
                _keep(path, records[n + 1:], ids)
        except Exception as e:
            if refused(e):
                sys.stderr.write(f"warning: MLflow refused a kept {rec['op']} operation of run {run} and it was "
                                 f"dropped: {str(e).splitlines()[0][:200]}\n")
                dropped += 1
                continue
            _keep(path, records[n:], ids)
            first = str(e).splitlines()[0][:150] if str(e) else ""
            raise UserError(f"{uri}: MLflow unreachable or refused the data ({type(e).__name__}: {first}); "
                            f"{len(records) - n} operations kept in {queue}") from None
        except BaseException:   # Ctrl-C, SIGTERM: what was sent is not sent again by the next sync
            _keep(path, records[n:], ids)
            raise
    path.unlink()
    return sent, ids, dropped, list(clients)


# Sent twice, a model would be another LoggedModel (metrics, params, tags, tables and artifacts land on the same
# values or files again): the queue is rewritten after each, so a sync killed afterwards does not send it again.
NOT_IDEMPOTENT = ("model",)
OFFLINE_ID_TAG = "fcos_offline_id"   # the pending id a run created by sync was kept under


def _create_once(c, rec: dict, ids: dict[str, str]) -> str:
    """The run of a kept "create": the one an earlier, interrupted sync made for it (found by its tag), else a
    new one; so a sync killed at any point never creates a run twice."""
    from .store import experiment_id
    exp_id = experiment_id(c, rec["payload"]["experiment"])
    found = c.search_runs([exp_id], f"tags.{OFFLINE_ID_TAG} = '{rec['run']}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {k: ids.get(v, v) for k, v in (rec["payload"].get("tags") or {}).items()}
    return create_run(c, {**rec["payload"], "tags": {**tags, OFFLINE_ID_TAG: rec["run"]}})


def _offline_run(c, pending: str) -> str | None:
    """The run an earlier sync created for the offline run `pending` (by its tag), in any experiment."""
    experiments = [e.experiment_id for e in c.search_experiments()]
    found = c.search_runs(experiments, f"tags.{OFFLINE_ID_TAG} = '{pending}'", max_results=1) if experiments else []
    return found[0].info.run_id if found else None


def _keep(path: Path, left: list[dict], ids: dict[str, str]) -> None:
    """The queue rewritten to what is left, with the real ids of the runs created so far."""
    with atomic_write(path) as f:
        f.write("".join(json.dumps(_named(r, ids)) + "\n" for r in left))
