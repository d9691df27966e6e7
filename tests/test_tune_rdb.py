"""Several commands on one study: an RDB storage (SQLite, a throwaway PostgreSQL server), commands started
together on a new study or database, and their one MLflow parent run."""
import io
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import run_cli
from test_tune import write_space

from pipeline.tuning.study import STUDY_UID


def _pg_ctl():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL server on 127.0.0.1 (run as the postgres user when we are root)."""
    bindir = _pg_ctl()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="fcos-pg-"))   # not under pytest's 0700 folder: postgres must enter it
    data = base / "pg"
    data.mkdir()
    prefix = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(data, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    run = lambda *cmd: subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
    r = run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    if r.returncode != 0:
        pytest.skip(f"initdb failed: {r.stderr[-300:]}")
    r = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w", "-o",
            f"-h 127.0.0.1 -p {port} -k {data}", "start")
    if r.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {r.stderr[-300:]}")
    yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_study_on_postgresql(project, postgres):
    write_space(project)
    assert run_cli("prepare").exit_code == 0
    r = run_cli("tune", "--trials", "2", "--storage", postgres, "--study-name", "pg")
    assert r.exit_code == 0, r.stderr
    study = optuna.load_study(study_name="pg", storage=postgres)
    assert len([t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]) == 2


def test_a_command_that_finds_a_brand_new_rdb_study_waits_for_its_creator_to_set_it_up(project):
    # Two commands started together on machines sharing a new RDB study: the one that did not create it must
    # not enqueue a second baseline nor write a second uid (an RDB storage has no lock to order them).
    from rich.console import Console

    from pipeline.params import load_params
    from pipeline.tuning.display import Display
    from pipeline.tuning.study import Study
    write_space(project)
    params, url = load_params("params.yaml"), f"sqlite:///{project / 'study.db'}"
    out = io.StringIO()
    display = Display(Console(file=out), "AP50", 1)
    first = Study(params, display, 2, url, "shared")
    second = Study(params, display, 2, url, "shared")
    assert first.created and not second.created
    waiting = threading.Thread(target=second.prepare)
    waiting.start()
    waiting.join(1.0)
    assert waiting.is_alive() and not first.study.get_trials() and STUDY_UID not in first.study.user_attrs
    for _ in range(100):   # after a second it says why it waits
        if "waiting for the command that created study 'shared'" in out.getvalue():
            break
        waiting.join(0.1)
    assert "waiting for the command that created study 'shared' to set it up (at most 30 s)" in out.getvalue()
    first.prepare()
    waiting.join(10)
    assert not waiting.is_alive()
    trials = optuna.load_study(study_name="shared", storage=url).get_trials()
    assert len(trials) == 1 and trials[0].user_attrs["baseline"]
    uid = first.study.user_attrs[STUDY_UID]
    assert second.study.user_attrs[STUDY_UID] == uid
    Study(params, display, 2, url, "shared").prepare()   # a later command: no wait, nothing added or changed
    assert len(first.study.get_trials()) == 1 and first.study.user_attrs[STUDY_UID] == uid


@pytest.mark.parametrize("server", ["sqlite", "postgres"])
def test_commands_opening_a_new_rdb_storage_together_all_open_it(request, tmp_path, server):
    # Workers started together on a new database each create its tables: the later ones met "table studies
    # already exists" (or the schema version row's UNIQUE constraint), reported as "storage unreachable".
    # Between threads the race happened on every try before the fix.
    from pipeline.tuning.storage import storage_for
    if server == "postgres":
        import psycopg2
        admin = request.getfixturevalue("postgres")
        conn = psycopg2.connect(admin.replace("postgresql+psycopg2", "postgresql"))
        conn.autocommit = True   # CREATE DATABASE runs outside a transaction
        for attempt in range(3):
            conn.cursor().execute(f"CREATE DATABASE new{attempt}")
        conn.close()
    urls = [f"sqlite:///{tmp_path / f'new{i}.db'}" if server == "sqlite" else
            admin.rsplit("/", 1)[0] + f"/new{i}" for i in range(3)]

    def open_it(url, barrier, errors):
        barrier.wait()
        try:
            storage_for(url, 20)
        except Exception as e:
            errors.append(e)
    for url in urls:
        barrier, errors = threading.Barrier(3), []
        threads = [threading.Thread(target=open_it, args=(url, barrier, errors)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors


def test_of_two_parent_runs_made_for_one_new_study_the_later_gives_way(project, monkeypatch):
    # MLflow cannot find-or-create atomically: two commands started together on a new study can each find no
    # parent run and make one. Here the other command makes its parent just after this one looked: this one's
    # run is deleted and its tags and end go to the other's, the one parent the UI and the report show.
    from mlflow.entities import ViewType
    from rich.console import Console

    from pipeline.params import load_params
    from pipeline.tracking.store import experiment_id
    from pipeline.tracking.store import find_run as real_find_run
    from pipeline.tuning import study as study_module
    write_space(project)
    params, c, other = load_params("params.yaml"), mlflow.MlflowClient(), []

    def find_run(params, tags, first=False):
        found = real_find_run(params, tags, first)
        if not other:
            other.append(c.create_run(experiment_id(c, params.tracking.experiment), tags=tags).info.run_id)
        return found

    monkeypatch.setattr(study_module, "find_run", find_run)
    study_module.run_study(params, Console(file=io.StringIO()), 0, None, "twins")
    exp = c.get_experiment_by_name(params.tracking.experiment).experiment_id
    query = "tags.optuna_study = 'twins'"
    active = c.search_runs([exp], query)
    deleted = c.search_runs([exp], query, run_view_type=ViewType.DELETED_ONLY)
    assert [r.info.run_id for r in active] == other and len(deleted) == 1
    assert active[0].data.tags["optuna_storage"].endswith("optuna.journal") and active[0].info.status == "FINISHED"
