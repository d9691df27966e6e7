"""Where a study lives: a journal file on one machine (the default), an RDB URL (PostgreSQL) across machines;
opening one without creating it (report), and recovering trials of dead workers."""
from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

from ..errors import UserError

DEFAULT_JOURNAL = Path("experiments/optuna.journal")


def shown_url(url: str) -> str:
    """The storage without its password."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def storage_for(url: str | None, heartbeat: int):
    """Journal file (one machine) by default; an RDB URL gets Optuna's heartbeat and stale-trial retry."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend
    path = Path(url or DEFAULT_JOURNAL)
    if not url or "://" not in url:
        if path.exists() and not path.is_file():
            raise UserError(f"{path}: not a journal file")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        with warnings.catch_warnings():   # heartbeats are "experimental" in Optuna; they are what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=heartbeat * 3,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as e:  # SQLAlchemy raises many kinds for unreachable servers, bad URLs, missing drivers
        raise UserError(f"{shown_url(url)}: storage unreachable ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:150]})") from None


def open_study(url: str, name: str):
    """(study, None) or (None, why not): never creates a storage that is not there."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    local = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None if "://" in url else url
    if local is not None and not Path(local).is_file():
        return None, f"no Optuna storage at {url}"
    try:
        storage = JournalStorage(JournalFileBackend(url)) if "://" not in url else url
        return optuna.load_study(study_name=name, storage=storage), None
    except KeyError:
        return None, f"no study named '{name}' in {shown_url(url)}"
    except Exception as e:   # corrupt journal, unreachable database, missing driver
        first = str(e).splitlines()[0][:150] if str(e) else ""
        return None, f"Optuna storage {shown_url(url)} is unreadable ({type(e).__name__}: {first})"


def mark_worker(study, trial) -> None:
    """Record which process runs `trial`, for retry_dead_local_trials."""
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    study._storage.set_trial_system_attr(trial._trial_id, "fcos_host", socket.gethostname())
    study._storage.set_trial_system_attr(trial._trial_id, "fcos_pid", os.getpid())


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
