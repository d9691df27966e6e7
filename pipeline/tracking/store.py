"""Where MLflow data lives: the tracking URI, a client, the experiment (created on first use) and the
artifact location beside a local store; the searches that find runs again."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import UserError
from ..provenance import project_root

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")   # no usage data leaves by default (README)
# Fail fast when a tracking server is down (the defaults retry for minutes); calls are kept and synced later.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

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
