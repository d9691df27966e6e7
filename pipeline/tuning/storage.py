"""Where a study lives: a journal file on one machine (the default), an RDB URL (PostgreSQL) across machines;
opening one without creating it (report), the lock that keeps a study's trial count exact, and recovering
trials of dead workers."""
from __future__ import annotations

import json
import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..artifacts import pid_alive
from ..errors import UserError
from ..paths import DEFAULT_JOURNAL

SQLITE_HEADER = b"SQLite format 3\x00"
SCHEMA_TRIES = 5   # opening a new RDB while another command creates its tables: tries (0.5 s, 1 s, ... apart)


def shown_url(url: str) -> str:
    """The storage without its password."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def journal_path(url: str | None) -> Path | None:
    """The journal file a storage setting names (None: an RDB URL)."""
    return Path(url or DEFAULT_JOURNAL) if not url or "://" not in url else None


def check_journal_file(path: Path) -> None:
    """Refuse, before anything is written to it, an existing file that is not an Optuna journal: Optuna's
    reader skips lines that are not JSON and would append its records to any text file. A journal's lines
    are JSON objects with an "op_code"; the first one is enough to tell."""
    if path.exists() and not path.is_file():
        raise UserError(f"{path}: not a journal file (a folder or a device)")
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        head = f.readline(1 << 16)
    if head.startswith(SQLITE_HEADER):
        raise UserError(f"{path}: an SQLite database, not an Optuna journal file: use --storage sqlite:///{path}")
    try:
        record = json.loads(head)
    except (ValueError, UnicodeDecodeError):
        record = None
    if not (isinstance(record, dict) and "op_code" in record):
        raise UserError(f"{path}: not an Optuna journal file (its first line is not a journal record); "
                        "name a new file or an existing journal")


def storage_for(url: str | None, heartbeat: int, on_stale=None):
    """Journal file (one machine) by default; an RDB URL gets Optuna's heartbeat and stale-trial retry, and
    `on_stale(study, trial)` is called for each trial failed that way."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend
    path = journal_path(url)
    if path is not None:
        check_journal_file(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))

    def stale(study, trial):
        retry(study, trial)
        if on_stale is not None:
            on_stale(study, trial)
    for attempt in range(SCHEMA_TRIES):
        try:
            with warnings.catch_warnings():   # heartbeats are "experimental" in Optuna; they are what we want
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = RetryHeartbeatStaleTrialCallback(max_retry=3)
                return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=heartbeat * 3,
                                  heartbeat_stale_trial_callback=stale)
        except Exception as e:  # SQLAlchemy raises many kinds for unreachable servers, bad URLs, missing drivers
            if attempt + 1 < SCHEMA_TRIES and _schema_race(e):
                time.sleep(0.5 * (attempt + 1))   # the other may be slow to commit on a loaded machine
                continue
            raise UserError(f"{shown_url(url)}: storage unreachable ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:150]})") from None


def _schema_race(error: Exception) -> bool:
    """RDBStorage creating the tables of a new database while another command does (two workers started
    together): a table or the schema version row already made by the other. Opening it again succeeds."""
    from sqlalchemy.exc import IntegrityError
    return isinstance(error, IntegrityError) or "already exists" in str(error)


@contextmanager
def study_lock(url: str | None):
    """Held while a worker counts the study's trials and starts one, so that N workers never start more
    than --trials: an exclusive flock on the journal file (Optuna's own lock is a separate `.lock` file and
    flock is advisory, so its reads and writes go on). An RDB storage has no such lock: Objective checks
    after the start instead (study.surplus)."""
    path = journal_path(url)
    if path is None:
        yield
        return
    import fcntl
    with open(path, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
        if "://" not in url:
            check_journal_file(Path(url))
        storage = JournalStorage(JournalFileBackend(url)) if "://" not in url else url
        return optuna.load_study(study_name=name, storage=storage), None
    except UserError as e:
        return None, str(e)
    except KeyError:
        return None, f"no study named '{name}' in {shown_url(url)}"
    except Exception as e:   # corrupt journal, unreachable database, missing driver
        first = str(e).splitlines()[0][:150] if str(e) else ""
        return None, f"Optuna storage {shown_url(url)} is unreadable ({type(e).__name__}: {first})"


def dashboard_command(url: str | None) -> str:
    """The command that opens the study in optuna-dashboard (a journal file is recognised by its path)."""
    return f"optuna-dashboard {shown_url(url) if url and '://' in url else journal_path(url)}"


def mark_worker(study, trial) -> None:
    """Record which process runs `trial` (host, pid and the pid's start time, so that a reused pid is not
    taken for the worker), for retry_dead_local_trials."""
    import torch
    pid = os.getpid()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{pid}")
    trial.set_user_attr("torch_threads", torch.get_num_threads())
    study._storage.set_trial_system_attr(trial._trial_id, "fcos_host", socket.gethostname())
    study._storage.set_trial_system_attr(trial._trial_id, "fcos_pid", pid)
    study._storage.set_trial_system_attr(trial._trial_id, "fcos_pid_start", _start_time(pid))


def retry_dead_local_trials(study) -> list:
    """Journal storages have no heartbeat: RUNNING trials whose worker process on this host is gone are
    marked FAIL and their parameters queued again. Returns those trials (as they were)."""
    from optuna.trial import TrialState
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.system_attrs.get("fcos_host"), t.system_attrs.get("fcos_pid")
        if host == socket.gethostname() and pid and not _alive(pid, t.system_attrs.get("fcos_pid_start")):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            requeue(study, t)
            dead.append(t)
    return dead


def requeue(study, trial) -> None:
    """Queue a trial's parameters again (a trial stopped by a signal or a dead worker)."""
    attrs = {"retry_of": trial.number}
    if trial.user_attrs.get("baseline"):
        attrs["baseline"] = True
    study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None elsewhere."""
    return _proc_stat(pid)[1]


def _proc_stat(pid: int) -> tuple[str | None, int | None]:
    """(state letter, start time) of a process from Linux /proc, (None, None) where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None, None


def _alive(pid: int, start: int | None = None) -> bool:
    """Whether the process that ran a trial still runs: not if the pid is gone, a zombie (killed, not yet
    reaped) or another process that got the same pid."""
    if not pid_alive(pid):
        return False
    state, now = _proc_stat(pid)
    return state != "Z" and (start is None or now in (None, start))
