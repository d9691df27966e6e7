"""`Tracker`: one MLflow run (the one shared by the stages of a `dvc repro`, or a tuning trial), whose calls
go to the server or, while it is unreachable, to the offline queue."""
from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from ..paths import PENDING_FILE, RUN_FILE
from .offline import append_pending, pending_steps
from .ops import apply, create_run, metric_name, refused
from .runfile import last_run, write_run_file
from .store import client, tracking_uri

if TYPE_CHECKING:
    from ..params_schema import Params


class Tracker:
    """An MLflow run; a no-op when tracking is disabled. Use as a context manager.

    new_run=True creates a run (named `name`, tagged `tags`); with remember=True (the pipeline's run) its id
    goes to models/mlflow_run.json with its store, where evaluate and visualize (new_run=False) find it again,
    in that store even if MLFLOW_TRACKING_URI has changed since (they say so).
    If the tracking server cannot be reached, nothing is lost: every call is appended to
    models/mlflow_pending.jsonl, the user is told once, and `fcos-exp sync` sends it when the server is back."""

    def __init__(self, params: Params, new_run: bool, *, run_id: str | None = None, name: str | None = None,
                 tags: dict | None = None, remember: bool = True, system_metrics: bool = False):
        self.enabled = params.tracking.enabled
        self.experiment = params.tracking.experiment
        self.new_run, self.name, self.tags, self.remember = new_run, name, tags or {}, remember
        self.run_id, self.client, self.offline, self.monitor = run_id, None, False, None
        self.uri: str | None = None
        self.system_metrics = system_metrics
        self.status: str | None = None   # the state the run ends in; by default FINISHED, FAILED on an error
        self.told_refused = False

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        self.uri = tracking_uri()
        saved = (self.run_id, self.uri) if self.run_id else last_run() if self.remember else None
        if self.new_run or not saved:
            # A name of our own: MLflow's random names repeat when `random` was seeded (train seeds first).
            name = self.name or os.environ.get("DVC_EXP_NAME") or time.strftime("run-%Y%m%d-%H%M%S")
            payload = {"experiment": self.experiment, "run_name": name, "tags": self.tags}
            try:
                self.client = client(self.uri)
                self.run_id = create_run(self.client, payload)
            except Exception as e:  # server down, network, locked database: go on and keep everything
                self._go_offline(e)
                self.run_id = f"pending-{uuid.uuid4().hex}"
                append_pending(self.run_id, "create", payload, self.uri)
            if self.remember:
                write_run_file(self.run_id, self.uri)
        else:
            self.run_id, uri = saved
            if uri and uri != self.uri:
                sys.stderr.write(f"note: run {self.run_id} of {RUN_FILE} is in {uri}, not in {self.uri} "
                                 "(MLFLOW_TRACKING_URI changed since train): logging into it there\n")
                self.uri = uri
            self.offline = self.run_id.startswith("pending-")
            if self.offline:
                sys.stderr.write(f"note: run {self.run_id} is not in MLflow yet: this stage's data joins it in "
                                 f"{PENDING_FILE}; `fcos-exp sync` sends them together\n")
            else:
                try:
                    self.client = client(self.uri)
                except Exception as e:
                    self._go_offline(e)
                self._send("reopen", {})
        if self.system_metrics and not self.offline:
            self._start_monitor()
        return self

    def give_way(self, run_id: str | None) -> None:
        """Log into `run_id` instead of the run this tracker just created, which is deleted: two commands
        that each found no run to reuse and created one (MLflow cannot find-or-create atomically) keep
        the earlier one. Nothing happens when `run_id` is ours or None, or while offline."""
        if not self.enabled or self.offline or run_id is None or run_id == self.run_id:
            return
        try:
            self.client.set_terminated(self.run_id, "KILLED")
            self.client.delete_run(self.run_id)
        except Exception as e:
            self._go_offline(e)
            return
        self.run_id = run_id
        self._send("reopen", {})

    def logged_steps(self, metric: str) -> int:
        """The last step of `metric` this run already holds, in MLflow or queued (0 if none): a resumed
        training replays the steps after its checkpoint, which must not be logged twice."""
        if not self.enabled or self.run_id is None:
            return 0
        steps = pending_steps(self.run_id, metric_name(metric))
        if self.client is not None and not self.offline:
            try:
                steps += [m.step for m in self.client.get_metric_history(self.run_id, metric_name(metric))]
            except Exception as e:
                self._go_offline(e)
        return max(steps, default=0)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.monitor is not None:
            self.monitor.finish()
        if self.enabled and self.run_id is not None:
            self._send("terminate", {"status": self.status or ("FAILED" if exc_type is not None else "FINISHED")})

    def _start_monitor(self) -> None:
        """CPU, memory, disk (and GPU with pynvml) every 10 s in the run's system metrics, where psutil is."""
        try:
            import psutil  # noqa: F401   (the monitor needs it)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
            self.monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, tracking_uri=self.uri)
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
        rows = [(metric_name(k), float(v), s, now) for k, v, s in rows
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
        if not self.enabled:
            return
        if not self.offline and self.client is not None:
            try:
                apply(self.client, self.run_id, op, payload)
                return
            except Exception as e:
                if refused(e):   # MLflow answered: keeping it for `fcos-exp sync` would only be refused again
                    self._refused(op, e)
                    return
                self._go_offline(e)
        append_pending(self.run_id, op, payload, self.uri)

    def _refused(self, op: str, error: Exception) -> None:
        if not self.told_refused:   # told once
            self.told_refused = True
            sys.stderr.write(f"warning: MLflow at {self.uri} refused the {op} of run {self.run_id} (and may refuse "
                             f"what follows): {(str(error).splitlines() or [''])[0][:200]}; not kept, as MLflow would "
                             "refuse it again (a run deleted in MLflow: restore it, or train again)\n")

    def _go_offline(self, error: Exception) -> None:
        if self.offline:   # told once
            return
        self.offline = True
        sys.stderr.write(f"warning: MLflow at {self.uri} is unreachable ({type(error).__name__}); "
                         f"tracking data is kept in {PENDING_FILE} - run `fcos-exp sync` when it is back\n")
