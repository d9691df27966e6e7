"""fcos-exp report from real runs of the tiny pipeline and a tiny study, checked against the MLflow API and
rendered in a real headless browser (Debian's chromium)."""
import base64
import io
import os
import re
import shutil
import subprocess

import mlflow
import optuna
import pytest
import yaml
from conftest import run_cli, tiny_params
from PIL import Image

EXPERIMENT = "report-tests"


def set_train(project, **train):
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["train"].update(train)
    (project / "params.yaml").write_text(yaml.safe_dump(p))


def section(md: str, title: str) -> str:
    return md.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def table(md: str, title: str) -> list[list[str]]:
    """The cells of the first Markdown table under `## title`, header row dropped, bold marks removed."""
    lines = [line for line in section(md, title).splitlines() if line.startswith("|")][2:]
    return [[c.strip().strip("*") for c in line.strip("|").split(" | ")] for line in lines]


@pytest.fixture(scope="module")
def reported(tmp_path_factory, tracking_uri):
    """Runs A (lr 0.01) and B (lr 0.005, seed 1) through train/evaluate/visualize, C trained only (no test
    metrics), a FAILED run with nothing logged, a 2-trial study; then `fcos-exp report`."""
    project = tmp_path_factory.mktemp("report")
    old = os.getcwd()
    os.chdir(project)
    try:
        p = tiny_params(tracking={"enabled": True, "experiment": EXPERIMENT, "log_every": 20})
        p["decode"]["score_thresh"] = 0.01
        p["tune"].update(trials=2, study_name="report-study")
        (project / "params.yaml").write_text(yaml.safe_dump(p))
        (project / "experiments").mkdir()
        (project / "experiments/tune_space.yaml").write_text(
            "train.lr: {type: float, low: 0.001, high: 0.01, log: true}\n")       # trials of 1 epoch (run C's)
        assert run_cli("prepare").exit_code == 0
        for lr, seed, epochs, stages in ((0.01, 0, 4, "tev"), (0.005, 1, 4, "tev"), (0.005, 2, 1, "t")):
            set_train(project, lr=lr, seed=seed, epochs=epochs, eval_every=int(epochs > 1))
            for stage in ("train", "evaluate", "visualize"):
                if stage[0] in stages:
                    r = run_cli(stage)
                    assert r.exit_code == 0, r.stderr
        client = mlflow.MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        failed = client.create_run(exp.experiment_id, run_name="broken")
        client.set_terminated(failed.info.run_id, "FAILED")
        r = run_cli("tune")
        assert r.exit_code == 0, r.stderr
        r = run_cli("report", "--sort-by", "AP50")
        assert r.exit_code == 0, r.stderr
        assert str(project / "reports/report.html") in r.stderr.replace("\n", "")
        return project, client, exp
    finally:
        os.chdir(old)


def pipeline_runs(client, exp):
    """The pipeline runs as the MLflow API lists them (tuning parent and trial runs left out), oldest first."""
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags and "optuna_study" not in r.data.tags]


@pytest.mark.slow
def test_leaderboard_rows_order_and_numbers_match_mlflow(reported):
    project, client, exp = reported
    md = (project / "reports/report.md").read_text()
    runs = pipeline_runs(client, exp)
    assert len(runs) == 4
    ranked = sorted((r for r in runs if "test/AP50" in r.data.metrics), key=lambda r: -r.data.metrics["test/AP50"])
    expected = ranked + [r for r in runs if "test/AP50" not in r.data.metrics]     # oldest first among those
    board = table(md, "Leaderboard")
    assert [row[1] for row in board] == [r.info.run_id[:8] for r in expected]
    for row, run in zip(board, expected):
        m, params = run.data.metrics, run.data.params
        assert row[0] == run.info.run_name and row[3] == params.get("train.lr", "—")
        assert row[5:11] == [f"{m[f'test/{k}']:.3f}" if f"test/{k}" in m else "—"
                             for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        seconds = m.get("train_summary/train_seconds")
        assert row[11] == ("—" if seconds is None else f"{seconds:.1f}")
    assert board[-1][0] == "broken" and board[-1][-1] == "✗ FAILED" and set(board[-1][2:13] + board[-1][14:-1]) == {"—"}
    assert [row[13] for row in board] == ["1"] * 4                     # no seed repeats: one run a row
    for row, run in zip(board[:2], expected):                          # A and B kept their test detections
        lo, hi = map(float, row[14].strip("[]").split(", "))
        assert 0 <= lo <= hi <= 1 and "test/AP50_se" in run.data.metrics
    trained_only = board[-2]
    assert trained_only[3] == "0.005" and trained_only[5] == "—" and trained_only[11] != "—"
    first = [line for line in section(md, "Leaderboard").splitlines() if line.startswith("|")][2]
    assert first.startswith(f"| **{board[0][0]}** |") and "| **FINISHED** |" in first   # the best row is bold


@pytest.mark.slow
def test_deltas_reproduce_commands_and_sections(reported):
    project, client, exp = reported
    md = (project / "reports/report.md").read_text()
    runs = pipeline_runs(client, exp)
    a, b = runs[0], runs[1]                                       # the oldest run is the default baseline
    assert f"Baseline: {a.info.run_name} ({a.info.run_id})" in md
    deltas = {row[1]: row for row in table(md, "Deltas against the baseline")}
    want = b.data.metrics["test/AP50"] - a.data.metrics["test/AP50"]
    assert deltas[b.info.run_id[:8]][3] == f"{want:+.3f}" and deltas[runs[3].info.run_id[:8]][3] == "—"
    commands = section(md, "Reproduce")
    assert f"({a.info.run_id[:8]}): `dvc exp run -S train.epochs=4 -S train.eval_every=1 -S train.lr=0.01 " \
           "-S train.seed=0`" in commands                   # what differs from params.yaml (not a git repo)
    assert f"({runs[2].info.run_id[:8]}): `dvc exp run`" in commands                             # = params.yaml
    assert "broken" in commands and "no params logged" in commands
    assert "![training loss and validation curves](assets/curves.png)" in md
    per_class = table(md, "Per-class AP50 of the top runs")
    best = max(runs[:2], key=lambda r: r.data.metrics["test/AP50"])
    assert per_class and all(row[1] == f"{best.data.metrics[f'test/AP50/{row[0]}']:.3f}" for row in per_class)
    detections = section(md, "Detections of the best run")
    assert best.info.run_name in detections and detections.count("](assets/detections/") == 2
    side_by_side = section(md, "Precision-recall, F1 and confusion of the top runs")     # top runs: A and B
    for name in ("pr_curve", "confusion_matrix_normalized", "f1_curve"):
        assert all(f"](assets/{r.info.run_id[:8]}/{name}.png)" in side_by_side for r in runs[:2])
    for r in runs[:2]:
        assert (project / "reports/assets" / r.info.run_id[:8] / "pr_curve.png").stat().st_size > 5000
    paired = table(md, "Paired comparison against the baseline")[:3]          # B against A, on 4 test images
    assert [row[1] for row in paired] == [r.info.run_id[:8] for r in runs[1:]]
    assert paired[0][5].startswith(f"{want:+.3f} [")
    assert paired[1][4] == paired[2][4] == "kept no test detections"
    dataset = section(md, f"Dataset of the best run ({best.info.run_name})")
    assert f"](assets/{best.info.run_id[:8]}/dataset.png)" in dataset


@pytest.mark.slow
def test_tuning_section_reads_the_study_and_its_mlflow_runs(reported):
    project, _, _ = reported
    tuning = section((project / "reports/report.md").read_text(), "Tuning")
    study = optuna.load_study(study_name="report-study", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(project / "experiments/optuna.journal"))))
    assert "Optuna study 'report-study' in experiments/optuna.journal (maximize): 2 trials: COMPLETE 2." in tuning
    assert f"Best trial {study.best_trial.number}: {study.best_value:.4f}" in tuning
    trials = [line for line in tuning.splitlines() if re.match(r"\| \d+ \| COMPLETE", line)]
    assert len(trials) == 2 and all(re.search(r"\| [0-9a-f]{8} \|$", t) for t in trials)   # MLflow run ids
    assert "tuning_history.png" in tuning and "tuning_importances.png" in tuning
    assert "MLflow: study run tune-report-study" in tuning and "nested trial runs: COMPLETE 2" in tuning


@pytest.mark.slow
def test_options_filter_and_pick_the_baseline(reported, monkeypatch):
    project, client, exp = reported
    monkeypatch.chdir(project)
    runs = pipeline_runs(client, exp)
    b = runs[1]
    r = run_cli("report", "--filter-tag", "seed=1", "--baseline", b.info.run_id[:10], "--out", "by_seed")
    assert r.exit_code == 0, r.stderr
    md = (project / "by_seed/report.md").read_text()
    assert [row[1] for row in table(md, "Leaderboard")] == [b.info.run_id[:8]]
    assert f"Baseline: {b.info.run_name}" in md and "filters**: tag seed=1" in md
    r = run_cli("report", "--status", "failed", "--last", "1", "--sort-by", "ms_per_image", "--out", "failed")
    assert r.exit_code == 0, r.stderr
    board = table((project / "failed/report.md").read_text(), "Leaderboard")
    assert [row[0] for row in board] == ["broken"]
    r = run_cli("report", "--baseline", "no-such-run", "--out", "bad")
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: --baseline 'no-such-run': no reported run has this id or name"


@pytest.mark.slow
def test_html_is_self_contained_and_renders_in_chromium(reported, tmp_path):
    project, client, exp = reported
    page = project / "reports/report.html"
    text = page.read_text()
    links = re.findall(r"""(?:src|href|url)[=(]["']?([^"')]{0,12})""", text)
    assert links and all(link.startswith("data:") for link in links) and "<script" not in text and "<link" not in text
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(uris) >= 14       # curves, per-class, 2x3 PR/confusion/F1, dataset, 2 tuning, 2 detections...
    for data in uris:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium package)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    board = re.search(r'<table id="leaderboard">(.*?)</table>', dom.stdout, re.S).group(1)
    rows = re.findall(r'<tr class="(\w*)">(.*?)</tr>', board, re.S)
    assert [re.findall(r"<td[^>]*>(.*?)</td>", cells)[1] for _, cells in rows] == \
        [row[1] for row in table((project / "reports/report.md").read_text(), "Leaderboard")]
    assert rows[0][0] == "best" and rows[-1][0] == "failed"
    assert dom.stdout.count("<img") == len(uris)
    shot = tmp_path / "shot.png"
    r = subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-500:]
    if os.environ.get("REPORT_SCREENSHOT"):     # keep it to look at
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000) and len(img.getcolors(maxcolors=1 << 20)) > 50    # not blank
    assert min(img.convert("L").getextrema()) < 60                                   # dark text on it


def test_no_runs_is_a_clear_message_and_exit_0(project):
    r = run_cli("report", "--experiment", "nothing-here")
    assert r.exit_code == 0, r.stderr
    assert "no MLflow experiment 'nothing-here'" in r.stderr and "report of 0 runs" in r.stderr
    md = (project / "reports/report.md").read_text()
    assert "run `dvc repro` first" in md and "no Optuna storage at experiments/optuna.journal" in md
    assert "<p id='empty'>" in (project / "reports/report.html").read_text()


def test_tuning_section_with_pruned_and_failed_trials(project):
    """A study of 1 complete, 1 pruned and 1 failed trial: counted, history drawn, importances skipped."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(project / "s.journal")))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL):
        trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)})
        trial.report(0.1, 1)
        study.tell(trial, 0.25 if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    r = run_cli("report", "--experiment", "nothing-here", "--storage", "s.journal", "--study-name", "s")
    assert r.exit_code == 0, r.stderr
    tuning = section((project / "reports/report.md").read_text(), "Tuning")
    assert "3 trials: COMPLETE 1, PRUNED 1, FAIL 1." in tuning and "Best trial 0: 0.2500" in tuning
    assert "tuning_history.png" in tuning and "tuning_importances" not in tuning
    assert "importances need at least 2 complete trials" in tuning
    r = run_cli("report", "--experiment", "nothing-here", "--storage", "s.journal", "--study-name", "other")
    assert "no study named 'other' in s.journal" in (project / "reports/report.md").read_text()
    (project / "bad.db").write_text("not a database\n")
    for url, shown in (("sqlite:///bad.db", "sqlite:///bad.db"), ("postgresql://me:secret@127.0.0.1:1/db",
                                                                   "postgresql://***@127.0.0.1:1/db")):
        r = run_cli("report", "--experiment", "nothing-here", "--storage", url)
        md = (project / "reports/report.md").read_text()
        assert r.exit_code == 0 and f"Optuna storage {shown} is unreadable" in md and "secret" not in md


@pytest.mark.parametrize("args,message", [
    (["--sort-by", "speed"], "--sort-by must be one of AP, AP50"),
    (["--status", "done"], "--status must be one of RUNNING"),
    (["--filter-tag", "seed"], "--filter-tag must look like key=value"),
    (["--last", "0"], "--last must be at least 1"),
])
def test_bad_options_are_one_line(project, args, message):
    r = run_cli("report", *args)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], r.stderr


def test_reproduce_command_diffs_against_the_runs_commit(tmp_path, monkeypatch):
    """-S lists the logged params that differ from params.yaml at the run's commit, quoted for the shell."""
    from pipeline.report.build import Row, reproduce_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.003\n  milestones: [0.67, 0.89]\ndata:\n  classes: null\n")
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], check=True,
                                    capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    git("add", "params.yaml")
    git("commit", "-qm", "params")
    commit = git("rev-parse", "HEAD")
    current = {"train.lr": 0.1, "train.milestones": [0.67, 0.89], "data.classes": None}   # edited since
    row = Row("id", "run", "FINISHED", {"train.lr": "0.003", "train.milestones": "[0.5, 0.9]", "data.classes": "None"},
              {"git_commit": commit}, {}, 0)
    assert reproduce_command(row, current, {}) == \
        f"git checkout {commit[:12]} && dvc exp run -S 'train.milestones=[0.5, 0.9]'"
    row.tags["git_commit"] = "0" * 40                     # a commit this repository does not have: diff against now
    assert reproduce_command(row, current, {}) == \
        "git checkout 000000000000 && dvc exp run -S train.lr=0.003 -S 'train.milestones=[0.5, 0.9]'"


def test_out_never_replaces_or_deletes_what_the_report_did_not_write(project):
    """--out a folder of the user's (docs/, .): their report.html and assets/ stay untouched, byte for byte;
    the report's own files from an earlier run are replaced."""
    docs = project / "docs"
    (docs / "assets").mkdir(parents=True)
    (docs / "assets" / "logo.png").write_bytes(b"mine")
    (docs / "notes.md").write_text("keep")
    r = run_cli("report", "--out", "docs")
    assert r.exit_code == 2 and "docs/assets/logo.png: exists and was not written by `fcos-exp report`" in r.stderr
    assert (docs / "assets" / "logo.png").read_bytes() == b"mine" and not (docs / "report.html").exists()
    (docs / "assets" / "logo.png").unlink()
    (docs / "report.html").write_text("<p>my page</p>")
    r = run_cli("report", "--out", "docs")
    assert r.exit_code == 2 and "docs/report.html: exists and was not written" in r.stderr.replace("\n", " ")
    assert (docs / "report.html").read_text() == "<p>my page</p>"
    (docs / "report.html").unlink()
    assert run_cli("report", "--out", "docs").exit_code == 0     # an empty folder of the user's: fine
    (docs / "report.html").write_text("stale")
    assert run_cli("report", "--out", "docs").exit_code == 0     # its own earlier report: replaced
    assert (docs / "report.html").read_text().startswith("<!doctype html>")
    assert (docs / "notes.md").read_text() == "keep"
    assert not [p for p in project.iterdir() if p.name.startswith(".docs-")]   # no staging folder left


def test_a_non_finite_metric_neither_ranks_first_nor_prints_digits(project, tracking_uri):
    import mlflow
    c = mlflow.MlflowClient(tracking_uri)
    exp = c.get_experiment_by_name("inf-check") or c.get_experiment(c.create_experiment("inf-check"))
    for name, value in (("fine", 0.5), ("broken", float("inf"))):
        run = c.create_run(exp.experiment_id, run_name=name)
        c.log_metric(run.info.run_id, "test/AP50", value)
        c.set_terminated(run.info.run_id)
    r = run_cli("report", "--experiment", "inf-check", "--out", "inf")
    assert r.exit_code == 0, r.stderr
    md = (project / "inf/report.md").read_text()
    board = md[md.index("| run |"):] if "| run |" in md else md
    assert "e+308" not in md and "179769" not in md
    assert board.index("fine") < board.index("broken")     # the finite run is the best one
