"""MLflow wiring: the tracking URI, the one run shared by the stages of a `dvc repro`, the training callback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from fcos.callbacks import Callback

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")   # no usage data leaves by default (README)
# Fail fast when a tracking server is down (the defaults retry for minutes); calls are kept and synced later.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

RUN_FILE = Path("models/mlflow_run.json")
PENDING_FILE = Path("models/mlflow_pending.jsonl")


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


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:") or "://" not in tracking_uri():
        location = (project_root() / "mlartifacts").as_uri()   # not ./mlruns of whatever directory we are in
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:   # created meanwhile by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


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
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for out in stages.get("prepare", {}).get("outs", []):
        if out.get("path") == "data/prepared":
            return str(out.get("md5", "unknown"))
    return "unknown"


class Tracker:
    """The MLflow run of this repro: created by train, reopened by evaluate and visualize (through
    models/mlflow_run.json); a no-op when tracking is disabled. Use as a context manager.

    If the tracking server cannot be reached, nothing is lost: every call is appended to
    models/mlflow_pending.jsonl, the user is told once, and `fcos-exp sync` sends it when the server is back."""

    def __init__(self, params: dict, new_run: bool):
        self.enabled = params["tracking"]["enabled"]
        self.experiment = params["tracking"]["experiment"]
        self.new_run, self.run_id, self.client, self.offline = new_run, None, None, False

    def __enter__(self) -> "Tracker":
        if not self.enabled:
            return self
        from mlflow import MlflowClient
        self.client = MlflowClient(tracking_uri())
        saved = _read_run_file()
        if self.new_run or not saved:
            # A name of our own: MLflow's random names repeat when `random` was seeded (train seeds first).
            name = os.environ.get("DVC_EXP_NAME") or time.strftime("run-%Y%m%d-%H%M%S")
            try:
                exp_id = _experiment_id(self.client, self.experiment)
                self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
            except Exception as e:  # server down, network, locked database: go on and keep everything
                self._go_offline(e)
                self.run_id = f"pending-{uuid.uuid4().hex}"
                _append_pending(self.run_id, "create", {"experiment": self.experiment, "run_name": name})
            _write_run_file(self.run_id)
        else:
            self.run_id = saved
            self.offline = saved.startswith("pending-")
            if not self.offline:
                self._send("reopen", {})
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.client is not None:
            self._send("terminate", {"status": "FAILED" if exc_type is not None else "FINISHED"})

    def log_params(self, params: dict) -> None:
        self._send("params", {k: str(v)[:500] for k, v in params.items()})

    def set_tags(self, tags: dict) -> None:
        self._send("tags", {k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        now = int(time.time() * 1000)
        rows = [(_metric_name(k), float(v), step or 0, now) for k, v in metrics.items()
                if isinstance(v, (int, float)) and v is not None and not isinstance(v, bool)]
        if rows:
            self._send("metrics", rows)

    def log_batch(self, rows: list[tuple[str, float, int]]) -> None:
        """Many (name, value, step) metrics in one request: per-step losses cost one request per flush."""
        now = int(time.time() * 1000)
        if rows:
            self._send("metrics", [(_metric_name(k), float(v), s, now) for k, v, s in rows])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if Path(path).exists():
            self._send("artifact", {"path": str(Path(path).resolve()), "folder": folder})

    def log_table(self, data: dict, name: str) -> None:
        self._send("table", {"data": data, "name": name})

    def _send(self, op: str, payload) -> None:
        if self.client is None:
            return
        if not self.offline:
            try:
                _apply(self.client, self.run_id, op, payload)
                return
            except Exception as e:
                self._go_offline(e)
        _append_pending(self.run_id, op, payload)

    def _go_offline(self, error: Exception) -> None:
        self.offline = True
        sys.stderr.write(f"warning: MLflow at {tracking_uri()} is unreachable ({type(error).__name__}); "
                         f"tracking data is kept in {PENDING_FILE} - run `fcos-exp sync` when it is back\n")


def _apply(client, run_id: str, op: str, payload) -> None:
    """One tracking operation against the server (also used to replay pending ones)."""
    from mlflow.entities import Metric, Param, RunTag
    if op == "reopen":
        client.update_run(run_id, status="RUNNING")
    elif op == "terminate":
        client.set_terminated(run_id, payload["status"])
    elif op == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in payload.items()])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in payload.items()])
    elif op == "metrics":
        metrics = [Metric(k, v, t, s) for k, v, s, t in payload]
        for i in range(0, len(metrics), 1000):   # the store's batch limit
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
    elif op == "artifact":
        if Path(payload["path"]).is_dir():
            client.log_artifacts(run_id, payload["path"], payload["folder"])
        else:
            client.log_artifact(run_id, payload["path"], payload["folder"])
    elif op == "table":
        client.log_table(run_id, payload["data"], payload["name"])
    else:
        raise ValueError(f"unknown tracking operation {op!r}")


def _append_pending(run_id: str, op: str, payload) -> None:
    PENDING_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(PENDING_FILE, "a") as f:
        f.write(json.dumps({"run": run_id, "op": op, "payload": payload}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def sync_pending(path: Path | None = None) -> tuple[int, dict[str, str]]:
    """Send the operations kept while MLflow was unreachable, in order. Runs created offline get their
    real id. Returns (operations sent, {pending id: real id}); the file is removed once all are sent."""
    from mlflow import MlflowClient
    path = Path(path or PENDING_FILE)
    if not path.is_file():
        return 0, {}
    client = MlflowClient(tracking_uri())
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ids: dict[str, str] = {}
    for n, rec in enumerate(records):
        run = rec["run"]
        if rec["op"] == "create":
            exp_id = _experiment_id(client, rec["payload"]["experiment"])
            ids[run] = client.create_run(exp_id, run_name=rec["payload"]["run_name"]).info.run_id
            continue
        try:
            _apply(client, ids.get(run, run), rec["op"], rec["payload"])
        except Exception:
            path.write_text("".join(json.dumps(r) + "\n" for r in records[n:]))   # keep what is left
            raise
    path.unlink()
    saved = _read_run_file()
    if saved in ids:
        _write_run_file(ids[saved])
    return len(records), ids


def _metric_name(name: str) -> str:
    """MLflow accepts only [/\\w.\\- ] in names."""
    return "".join(c if c.isalnum() or c in "/_.- " else "_" for c in name)


def _write_run_file(run_id: str) -> None:
    RUN_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = RUN_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri()}))
    os.replace(tmp, RUN_FILE)


def _read_run_file() -> str | None:
    try:
        return json.loads(RUN_FILE.read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


class MlflowCallback(Callback):
    """Per-step losses and lr (sent in batches every `every` steps), per-epoch summaries and validation."""

    def __init__(self, tracker: Tracker, every: int = 20):
        self.tracker, self.every, self.rows = tracker, every, []

    def on_step_end(self, state, losses, lr):
        s = state.global_step
        self.rows += [(f"train/{k}", v, s) for k, v in losses.items()] + [("train/lr", lr, s)]
        if s % self.every == 0:
            self.flush()

    def on_epoch_end(self, state, summary):
        self.flush()
        self.tracker.log_metrics({f"epoch/{k}": v for k, v in summary.items()}, step=state.epoch + 1)

    def on_eval_end(self, state, metrics):
        self.tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=state.epoch + 1)

    def on_train_end(self, state, error):
        self.flush()

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        self.tracker.log_batch(rows)
