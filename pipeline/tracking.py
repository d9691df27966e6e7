"""MLflow wiring: the tracking URI, the one run shared by the stages of a `dvc repro`, the training callback."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from fcos.callbacks import Callback

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")   # no usage data leaves by default (README)

RUN_FILE = Path("models/mlflow_run.json")


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


def _experiment_id(mlflow, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:") or "://" not in tracking_uri():
        location = (project_root() / "mlartifacts").as_uri()   # not ./mlruns of whatever directory we are in
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:   # created meanwhile by another process
        return mlflow.get_experiment_by_name(name).experiment_id


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
    """Opens the MLflow run of this repro (new in train, the same one in evaluate/visualize) or does
    nothing when tracking is disabled. Use as a context manager; the run ends with the stage's status."""

    def __init__(self, params: dict, new_run: bool):
        self.enabled = params["tracking"]["enabled"]
        self.params, self.new_run, self.run_id = params, new_run, None
        self.mlflow = None

    def __enter__(self) -> "Tracker":
        if not self.enabled:
            return self
        import mlflow
        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri())
        exp_id = _experiment_id(mlflow, self.params["tracking"]["experiment"])
        run_id = None if self.new_run else _read_run_id()
        run = mlflow.start_run(run_id=run_id, experiment_id=exp_id,
                               run_name=os.environ.get("DVC_EXP_NAME") if run_id is None else None)
        self.run_id = run.info.run_id
        if self.new_run:
            _write_run_id(self.run_id, tracking_uri())
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run("FAILED" if exc_type is not None else "FINISHED")

    # Every method below is a no-op when tracking is disabled.
    def log_params(self, params: dict) -> None:
        if self.mlflow:
            self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def set_tags(self, tags: dict) -> None:
        if self.mlflow:
            self.mlflow.set_tags(tags)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if self.mlflow:
            clean = {_metric_name(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
            self.mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if self.mlflow and Path(path).exists():
            (self.mlflow.log_artifacts if Path(path).is_dir() else self.mlflow.log_artifact)(str(path), folder)

    def log_table(self, data: dict, name: str) -> None:
        if self.mlflow:
            self.mlflow.log_table(data, artifact_file=name)

    def log_batch(self, rows: list[tuple[str, float, int]]) -> None:
        """Many (name, value, step) metrics in one call: per-step losses cost one request per flush."""
        if self.mlflow and rows:
            from mlflow.entities import Metric
            now = int(time.time() * 1000)
            metrics = [Metric(_metric_name(k), float(v), now, s) for k, v, s in rows]
            client = self.mlflow.MlflowClient()
            for i in range(0, len(metrics), 1000):   # the store's batch limit
                client.log_batch(self.run_id, metrics=metrics[i:i + 1000])


def _metric_name(name: str) -> str:
    """MLflow accepts only [/\\w.\\- ] in names."""
    return "".join(c if c.isalnum() or c in "/_.- " else "_" for c in name)


def _write_run_id(run_id: str, uri: str) -> None:
    RUN_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = RUN_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
    os.replace(tmp, RUN_FILE)


def _read_run_id() -> str | None:
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
