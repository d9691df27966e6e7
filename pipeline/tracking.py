"""MLflow, the one layer every write and read goes through: the tracking URI, `Tracker` (a run: the one
shared by the stages of a `dvc repro`, or a tuning trial) with its offline queue, `fcos-exp sync`, the
training callback, and the reads of `fcos-exp report`."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path

from fcos.callbacks import Callback
from fcos.files import atomic_write

from .errors import UserError
from .provenance import project_root

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")   # no usage data leaves by default (README)
# Fail fast when a tracking server is down (the defaults retry for minutes); calls are kept and synced later.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

RUN_FILE = Path("models/mlflow_run.json")
PENDING_FILE = Path("models/mlflow_pending.jsonl")
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}   # MLflow 3's UI: a training experiment


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the sqlite file mlflow.db at the project root (an absolute path: DVC runs
    experiments in other folders). Characters sqlite URIs give a meaning to (% ? #) are refused."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = project_root() / "mlflow.db"
    if any(c in str(db) for c in "%?#"):
        raise UserError(f"{db.parent}: the project path holds one of % ? #, which a sqlite URI cannot carry; "
                        "move the project or set MLFLOW_TRACKING_URI")
    return f"sqlite:///{db}"


def client():
    """An MlflowClient of tracking_uri(), with MLflow's own INFO logging (schema migrations) kept quiet."""
    from mlflow import MlflowClient
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri())


def _artifact_location() -> str | None:
    """Artifacts beside a local store: <root>/mlartifacts, or the sqlite file's folder/mlartifacts when a
    shared sqlite store is named by MLFLOW_TRACKING_URI (never ./mlruns of whatever folder we are in)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None if "://" in uri else (project_root() / "mlartifacts").as_uri()


def experiment_id(mlflow_client, name: str) -> str:
    """The id of experiment `name`, created (marked as a model-training experiment) if absent."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=_artifact_location(), tags=EXPERIMENT_KIND)
    except Exception:   # created meanwhile by another process
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class Tracker:
    """An MLflow run; a no-op when tracking is disabled. Use as a context manager.

    new_run=True creates a run (named `name`, tagged `tags`); with remember=True (the pipeline's run) its id
    goes to models/mlflow_run.json, where evaluate and visualize (new_run=False) find it again.
    If the tracking server cannot be reached, nothing is lost: every call is appended to
    models/mlflow_pending.jsonl, the user is told once, and `fcos-exp sync` sends it when the server is back."""

    def __init__(self, params: dict, new_run: bool, *, run_id: str | None = None, name: str | None = None,
                 tags: dict | None = None, remember: bool = True, system_metrics: bool = False):
        self.enabled = params["tracking"]["enabled"]
        self.experiment = params["tracking"]["experiment"]
        self.new_run, self.name, self.tags, self.remember = new_run, name, tags or {}, remember
        self.run_id, self.client, self.offline, self.monitor = run_id, None, False, None
        self.system_metrics = system_metrics
        self.status: str | None = None   # the state the run ends in; by default FINISHED, FAILED on an error

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        self.client = client()
        saved = self.run_id or (_read_run_file() if self.remember else None)
        if self.new_run or not saved:
            # A name of our own: MLflow's random names repeat when `random` was seeded (train seeds first).
            name = self.name or os.environ.get("DVC_EXP_NAME") or time.strftime("run-%Y%m%d-%H%M%S")
            payload = {"experiment": self.experiment, "run_name": name, "tags": self.tags}
            try:
                self.run_id = _create(self.client, payload)
            except Exception as e:  # server down, network, locked database: go on and keep everything
                self._go_offline(e)
                self.run_id = f"pending-{uuid.uuid4().hex}"
                _append_pending(self.run_id, "create", payload)
            if self.remember:
                _write_run_file(self.run_id)
        else:
            self.run_id = saved
            self.offline = saved.startswith("pending-")
            if not self.offline:
                self._send("reopen", {})
        if self.system_metrics and not self.offline:
            self._start_monitor()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.monitor is not None:
            self.monitor.finish()
        if self.client is not None:
            self._send("terminate", {"status": self.status or ("FAILED" if exc_type is not None else "FINISHED")})

    def _start_monitor(self) -> None:
        """CPU, memory, disk (and GPU with pynvml) every 10 s in the run's system metrics, where psutil is."""
        try:
            import psutil  # noqa: F401   (the monitor needs it)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
            self.monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, tracking_uri=tracking_uri())
            self.monitor.start()
        except Exception:   # no psutil, or a monitor that cannot start: the run goes on without them
            self.monitor = None

    def log_params(self, params: dict) -> None:
        self._send("params", {k: str(v)[:500] for k, v in params.items()})

    def set_tags(self, tags: dict) -> None:
        self._send("tags", {k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.log_batch([(k, v, step or 0) for k, v in metrics.items()])

    def log_batch(self, rows: list[tuple[str, float, int]]) -> None:
        """Many (name, value, step) metrics in one request: per-step losses cost one request per flush."""
        now = int(time.time() * 1000)
        rows = [(_metric_name(k), float(v), s, now) for k, v, s in rows
                if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if rows:
            self._send("metrics", rows)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if Path(path).exists():
            self._send("artifact", {"path": str(Path(path).resolve()), "folder": folder})

    def log_table(self, data: dict, name: str) -> None:
        self._send("table", {"data": data, "name": name})

    def log_dataset(self, name: str, digest: str, source: str) -> None:
        """The data the run trained on, as an MLflow dataset input (name, hash, where it came from)."""
        self._send("dataset", {"name": name, "digest": digest, "source": source})

    def log_model(self, path: str | Path, name: str, params: dict) -> None:
        """A checkpoint file as the run's model (an MLflow LoggedModel holding the file, no export)."""
        if Path(path).is_file():
            self._send("model", {"path": str(Path(path).resolve()), "name": name, "params": params})

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


def _create(mlflow_client, payload: dict) -> str:
    exp_id = experiment_id(mlflow_client, payload["experiment"])
    return mlflow_client.create_run(exp_id, run_name=payload["run_name"], tags=payload.get("tags") or None).info.run_id


def _apply(c, run_id: str, op: str, payload) -> None:
    """One tracking operation against the server (also used to replay pending ones)."""
    from mlflow.entities import Metric, Param, RunTag
    if op == "reopen":
        c.update_run(run_id, status="RUNNING")
    elif op == "terminate":
        c.set_terminated(run_id, payload["status"])
    elif op == "params":
        c.log_batch(run_id, params=[Param(k, v) for k, v in payload.items()])
    elif op == "tags":
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in payload.items()])
    elif op == "metrics":
        metrics = [Metric(k, v, t, s) for k, v, s, t in payload]
        for i in range(0, len(metrics), 1000):   # the store's batch limit
            c.log_batch(run_id, metrics=metrics[i:i + 1000])
    elif op == "artifact":
        if Path(payload["path"]).is_dir():
            c.log_artifacts(run_id, payload["path"], payload["folder"])
        else:
            c.log_artifact(run_id, payload["path"], payload["folder"])
    elif op == "table":
        c.log_table(run_id, payload["data"], payload["name"])
    elif op == "dataset":
        from mlflow.entities import Dataset, DatasetInput
        c.log_inputs(run_id, [DatasetInput(Dataset(payload["name"], payload["digest"], "local", payload["source"]))])
    elif op == "model":
        from mlflow.entities import LoggedModelOutput
        run = c.get_run(run_id)
        model = c.create_logged_model(run.info.experiment_id, name=payload["name"], source_run_id=run_id,
                                      params={k: str(v) for k, v in payload["params"].items()},
                                      model_type="fcos-detector")
        _log_model_file(c, model.model_id, payload["path"])
        c.finalize_logged_model(model.model_id, "READY")
        c.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
    else:
        raise ValueError(f"unknown tracking operation {op!r}")


def _log_model_file(c, model_id: str, path: str) -> None:
    """log_model_artifacts takes a folder: give it one holding only the checkpoint (a link, not a copy)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / Path(path).name).symlink_to(path)
        c.log_model_artifacts(model_id, tmp)


def _append_pending(run_id: str, op: str, payload) -> None:
    PENDING_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(PENDING_FILE, "a") as f:
        f.write(json.dumps({"run": run_id, "op": op, "payload": payload}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def sync_pending(path: Path | None = None) -> tuple[int, dict[str, str], int]:
    """Send the operations kept while MLflow was unreachable, in order. Runs created offline get their real
    id, also in what is left when a send fails (so a later sync goes on from there). Operations of a run
    that no longer exists are dropped and counted. Returns (sent, {pending id: real id}, dropped); the file
    is removed once all are sent. UserError when the server cannot be reached."""
    path = Path(path or PENDING_FILE)
    if not path.is_file():
        return 0, {}, 0
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
    c = client()
    ids: dict[str, str] = {}
    gone: set[str] = set()
    sent = dropped = 0
    for n, rec in enumerate(records):
        run = ids.get(rec["run"], rec["run"])
        try:
            if rec["op"] == "create":
                tags = {k: ids.get(v, v) for k, v in (rec["payload"].get("tags") or {}).items()}
                ids[rec["run"]] = _create(c, {**rec["payload"], "tags": tags})
            elif run.startswith("pending-") or run in gone or not _run_exists(c, run):
                gone.add(run)
                dropped += 1
                continue
            else:
                _apply(c, run, rec["op"], rec["payload"])
            sent += 1
        except Exception as e:
            left = [{**r, "run": ids.get(r["run"], r["run"])} for r in records[n:]]
            with atomic_write(path) as f:
                f.write("".join(json.dumps(r) + "\n" for r in left))   # keep what is left, with real ids
            raise UserError(f"{tracking_uri()}: MLflow unreachable or refused the data ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:150] if str(e) else ''}); {len(left)} operations kept "
                            f"in {path}") from None
    path.unlink()
    saved = _read_run_file()
    if saved in ids:
        _write_run_file(ids[saved])
    return sent, ids, dropped


def _run_exists(c, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    try:
        c.get_run(run_id)
        return True
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower():
            return False
        raise


def _metric_name(name: str) -> str:
    """MLflow accepts only [/\\w.\\- ] in names."""
    return "".join(c if c.isalnum() or c in "/_.- " else "_" for c in name)


def _write_run_file(run_id: str) -> None:
    with atomic_write(RUN_FILE) as f:
        f.write(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri()}))


def _read_run_file() -> str | None:
    try:
        return json.loads(RUN_FILE.read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def last_run_id() -> str | None:
    """The run of the last `fcos-exp train` in this folder (models/mlflow_run.json), if any."""
    return _read_run_file()


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


def find_run(params: dict, tags: dict) -> str | None:
    """The newest run of the params' experiment carrying all `tags` (None when there is none, tracking is
    off or the server cannot be reached: the caller then starts a new run)."""
    if not params["tracking"]["enabled"]:
        return None
    try:
        c = client()
        exp = c.get_experiment_by_name(params["tracking"]["experiment"])
        if exp is None:
            return None
        query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        found = c.search_runs([exp.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
        return found[0].info.run_id if found else None
    except Exception:
        return None


def reader():
    """A client for reading runs (report); UserError when the tracking store cannot be reached."""
    c = client()
    try:
        c.search_experiments(max_results=1)
    except Exception as e:
        raise UserError(f"{tracking_uri()}: MLflow unreachable ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:150] if str(e) else ''})") from None
    return c
