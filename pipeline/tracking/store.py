"""Where MLflow data lives: the tracking URI, a client, the experiment (created on first use) and the
artifact location beside a local store; the searches that find runs again."""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..provenance import project_root

if TYPE_CHECKING:
    from ..params_schema import Params

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")   # no usage data leaves by default (README)
# Fail fast when a tracking server is down (the defaults retry for minutes); calls are kept and synced later.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}   # MLflow 3's UI: a training experiment


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the sqlite file mlflow.db at the project root. A relative sqlite path is made
    absolute from the project root (DVC runs experiments in other folders, which would each get a store of
    their own). MLflow 3's file store (a plain path, file://) and characters sqlite URIs give a meaning to
    (% ? #) are refused in one line."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        uri = f"sqlite:///{project_root() / 'mlflow.db'}"
    elif uri.startswith("file:") or "://" not in uri:
        raise UserError(f"MLFLOW_TRACKING_URI={uri}: a folder (MLflow's file store, retired in MLflow 3) is not "
                        "supported; use sqlite:///ABSOLUTE/PATH/mlflow.db or http://HOST:PORT")
    elif uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{project_root() / uri.removeprefix('sqlite:///')}"
    db = sqlite_path(uri)
    if db is not None and any(c in str(db) for c in "%?#"):
        raise UserError(f"{db.parent}: the path holds one of % ? #, which a sqlite URI cannot carry; move the "
                        "project or set MLFLOW_TRACKING_URI")
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def client(uri: str | None = None):
    """An MlflowClient of `uri` (default tracking_uri()), with MLflow's own INFO logging kept quiet.

    A sqlite store is opened under a file lock beside it: MLflow creates and migrates the schema on first
    use, and two processes doing that at once (two tune workers on a fresh project) made one of them fail.
    A store that does not exist in a folder that cannot be written is refused at once (MLflow retries for
    minutes)."""
    from mlflow import MlflowClient
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = uri or tracking_uri()
    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(uri)
    if not db.exists() and not os.access(db.parent if db.parent.exists() else project_root(), os.W_OK):
        raise UserError(f"{db}: no MLflow store there and its folder cannot be written; set MLFLOW_TRACKING_URI")
    if db.exists() and not db.is_file():   # sqlite would wait on a pipe forever
        raise UserError(f"{db}: not a regular file (a pipe, device, socket or folder), so no MLflow store; "
                        "set MLFLOW_TRACKING_URI")
    db.parent.mkdir(parents=True, exist_ok=True)
    from ..artifacts import open_append
    try:
        lock = open_append(db.with_name(db.name + ".lock"))   # held for the `with` below only
    except OSError:   # a read-only folder with an existing store: nothing will be created there
        return MlflowClient(uri)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        c = MlflowClient(uri)
        c.search_experiments(max_results=1)   # creates or migrates the schema, one process at a time
    return c


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store in mlartifacts/ beside its file (never ./mlruns of whatever folder we are
    in); a server's own location otherwise."""
    db = sqlite_path(uri)
    return None if db is None else (db.resolve().parent / "mlartifacts").as_uri()


def experiment_id(mlflow_client, name: str) -> str:
    """The id of experiment `name`, created (marked as a model-training experiment) if absent."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=_artifact_location(mlflow_client.tracking_uri),
                                               tags=EXPERIMENT_KIND)
    except Exception:   # created meanwhile by another process
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_run(params: Params, tags: dict, first: bool = False) -> str | None:
    """The newest (`first`: the earliest) run of the params' experiment carrying all `tags` (None when there
    is none, tracking is off or the server cannot be reached: the caller then starts a new run)."""
    if not params.tracking.enabled:
        return None
    try:
        c = client()
        exp = c.get_experiment_by_name(params.tracking.experiment)
        if exp is None:
            return None
        query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        order = "ASC" if first else "DESC"   # run_id: the same pick for every caller when start times tie
        found = c.search_runs([exp.experiment_id], query, max_results=1,
                              order_by=[f"attributes.start_time {order}", "attributes.run_id ASC"])
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
