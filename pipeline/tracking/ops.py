"""The tracking operations, as data: each call of a `Tracker` is an (op, payload) pair that is either sent
at once or kept in the offline queue and replayed by `fcos-exp sync`, through the same `apply`."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .store import experiment_id


def create_run(mlflow_client, payload: dict) -> str:
    """A new run of payload's experiment (created if absent), named and tagged as the payload says."""
    exp_id = experiment_id(mlflow_client, payload["experiment"])
    return mlflow_client.create_run(exp_id, run_name=payload["run_name"], tags=payload.get("tags") or None).info.run_id


def apply(c, run_id: str, op: str, payload) -> None:
    """One tracking operation against the server."""
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
        _log_table(c, run_id, payload["data"], payload["name"])
    elif op == "dataset":
        from mlflow.entities import Dataset, DatasetInput
        c.log_inputs(run_id, [DatasetInput(Dataset(payload["name"], payload["digest"], "local", payload["source"]))])
    elif op == "model":
        from mlflow.entities import LoggedModelOutput
        run = c.get_run(run_id)
        model = c.create_logged_model(run.info.experiment_id, name=payload["name"], source_run_id=run_id,
                                      params={k: str(v) for k, v in payload["params"].items()},
                                      model_type="fcos-detector")
        try:
            _log_model_file(c, model.model_id, payload["path"])
            c.finalize_logged_model(model.model_id, "READY")
        except BaseException as e:   # no half-logged model left PENDING beside the one a later sync logs
            try:
                c.delete_logged_model(model.model_id)
            except Exception:
                pass
            if not isinstance(e, Exception):   # Ctrl-C, SIGTERM: stopped, not failed
                raise
            error = RuntimeError(f"{payload['path']}: not logged as the run's model ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:150] if str(e) else ''})")
            error.error_code = getattr(e, "error_code", None)   # a refusal stays one (offline.sync_pending)
            raise error from None
        c.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
    else:
        raise ValueError(f"unknown tracking operation {op!r}")


def _log_table(c, run_id: str, data: dict, name: str) -> None:
    """A table of columns as MLflow's log_table stores it (pandas' "split" JSON, listed in the run's
    mlflow.loggedArtifacts tag for the UI), but replacing the run's table of that name: log_table appends to it,
    so evaluating into a run again, or a sync sending the table again, doubled its rows."""
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_text(json.dumps({"columns": list(data), "data": [list(row) for row in zip(*data.values())]}))
        folder = str(Path(name).parent)
        c.log_artifact(run_id, str(path), None if folder == "." else folder)
    listed = json.loads(c.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    if {"path": name, "type": "table"} not in listed:
        c.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*listed, {"path": name, "type": "table"}]))


def _log_model_file(c, model_id: str, path: str) -> None:
    """log_model_artifacts takes a folder: give it one holding only the checkpoint (a link, not a copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / Path(path).name).symlink_to(path)
        c.log_model_artifacts(model_id, tmp)


def refused(e: Exception) -> bool:
    """MLflow answered that the data itself is invalid, or that its run is gone (deleted in the UI): sending it
    again can never succeed, unlike a server that did not answer."""
    return getattr(e, "error_code", None) in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")


def run_exists(c, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    try:
        c.get_run(run_id)
        return True
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower():
            return False
        raise


def metric_name(name: str) -> str:
    """MLflow accepts only [/\\w.\\- ] in names."""
    return "".join(c if c.isalnum() or c in "/_.- " else "_" for c in name)
