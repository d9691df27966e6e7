"""`fcos-exp tune`: an Optuna study over a search space declared in data, each trial a nested MLflow run.

Trials train on data/prepared/train.json and are scored on data/prepared/val.json (never the test split),
reporting the validation metric every epoch so the pruner can stop them. Several workers share one study:
a journal file on one machine (the default), an RDB URL (PostgreSQL) across machines.
"""
from __future__ import annotations

import copy
import os
import socket
import tempfile
from pathlib import Path

import yaml

from .errors import UserError
from .params import SCHEMA, _validate, model_config, train_config

DEFAULT_JOURNAL = Path("experiments/optuna.journal")
BEST_FILE = Path("experiments/best_params.yaml")


def load_space(path: str | Path, params: dict) -> dict:
    """The search space: {dotted key: {"type": float|int|categorical, ...}}, checked against params.yaml."""
    path = Path(path)
    try:
        space = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: search space file not found") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    problems = []
    for key, spec in space.items():
        section, _, name = key.partition(".")
        if section not in params or not isinstance(params[section], dict) or name not in params[section]:
            problems.append(f"{path}: {key}: not a params.yaml key")
            continue
        kind = (spec or {}).get("type")
        if kind in ("float", "int"):
            if not (isinstance(spec.get("low"), (int, float)) and isinstance(spec.get("high"), (int, float))):
                problems.append(f"{path}: {key}: needs numeric low and high")
            elif spec["low"] >= spec["high"]:
                problems.append(f"{path}: {key}: empty range (low {spec['low']} >= high {spec['high']})")
            elif spec.get("log") and spec["low"] <= 0:
                problems.append(f"{path}: {key}: a log range needs low > 0")
        elif kind == "categorical":
            if not spec.get("choices"):
                problems.append(f"{path}: {key}: needs a non-empty choices list")
        else:
            problems.append(f"{path}: {key}: type must be float, int or categorical, got {kind!r}")
    if not space:
        problems.append(f"{path}: the search space is empty")
    if problems:
        raise UserError("\n".join(problems))
    return space


def suggest(trial, space: dict) -> dict:
    out = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            out[key] = trial.suggest_float(key, spec["low"], spec["high"], log=bool(spec.get("log")))
        elif spec["type"] == "int":
            out[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1))
        else:
            out[key] = trial.suggest_categorical(key, spec["choices"])
    return out


def apply_values(params: dict, values: dict) -> dict:
    """A copy of params with dotted-key values set, validated like params.yaml itself."""
    p = copy.deepcopy(params)
    for key, value in values.items():
        section, _, name = key.partition(".")
        p[section][name] = value
    problems: list[str] = []
    _validate(p, SCHEMA, "", problems)
    if problems:
        raise UserError("\n".join(f"search space: {line}" for line in problems))
    return p


def storage_for(url: str | None, heartbeat: int):
    """Journal file (one machine) by default; an RDB URL gets Optuna's heartbeat and stale-trial retry."""
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend
    if not url:
        DEFAULT_JOURNAL.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(DEFAULT_JOURNAL)))
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    try:
        return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=heartbeat * 3,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as e:  # SQLAlchemy raises many kinds for unreachable servers, bad URLs, missing drivers
        raise UserError(f"{url.split('@')[-1]}: storage unreachable ({type(e).__name__}: {str(e).splitlines()[0][:150]})") from None


def retry_dead_local_trials(study) -> int:
    """Journal storages have no heartbeat: RUNNING trials whose worker process on this host is gone are
    marked failed and their parameters queued again. Returns how many."""
    from optuna.trial import TrialState
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.system_attrs.get("fcos_host"), t.system_attrs.get("fcos_pid")
        if host == socket.gethostname() and pid and not _alive(pid):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def make_pruner(name: str, max_epochs: int):
    import optuna
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, max_epochs))
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def run_trial(params: dict, trial_params: dict, metric: str, report) -> float:
    """Train with trial_params on the train split, validate every epoch on the val split; `report(epoch, value)`
    may raise StopTraining to prune. Returns the last validation value."""
    from fcos import FCOS
    from fcos.callbacks import Callback, StopTraining
    from fcos.data import CocoDataset, build_loader
    from fcos.engine import fit, seed_everything

    from .params import device_of
    from .stages.prepare import PREPARED

    p = apply_values(params, trial_params)
    for split in ("train", "val"):
        if not (PREPARED / f"{split}.json").is_file():
            raise UserError(f"{PREPARED / split}.json: not found; run `fcos-exp prepare` first")
    val = CocoDataset(PREPARED / "val.json")
    if len(val) == 0:
        raise UserError("data/prepared/val.json is empty: set data.val_fraction > 0 and run `fcos-exp prepare`")
    train = CocoDataset(PREPARED / "train.json", train=True, use_difficult=p["data"]["train_difficult"])
    seed_everything(p["train"]["seed"])
    model = FCOS.from_config(model_config(p, len(train.classes)))
    cfg = train_config(p)
    cfg.eval_every = 1
    last: dict = {}

    class Report(Callback):
        def on_eval_end(self, state, metrics):
            last["value"] = metrics[metric] or 0.0
            report(state.epoch + 1, last["value"], metrics)

    with tempfile.TemporaryDirectory() as tmp:
        result = fit(model, build_loader(train, p["train"]["batch_size"], shuffle=True, seed=p["train"]["seed"],
                                         num_workers=p["data"]["num_workers"]),
                     cfg, checkpoint_path=Path(tmp) / "trial.pt", classes=train.classes, callbacks=[Report()],
                     val_loader=build_loader(val, p["eval"]["batch_size"]), val_gt=PREPARED / "val.json",
                     val_cat_ids=val.cat_ids, device=device_of(p))
    if result["stopped_early"]:
        raise StopTraining
    return last["value"]
