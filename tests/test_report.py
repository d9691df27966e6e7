"""fcos-exp report from real runs of the tiny pipeline and a tiny study; rendered in a real headless browser."""
import shutil
import subprocess

import mlflow
import pytest
import yaml
from conftest import run_cli
from PIL import Image


def set_params(project, **train):
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["train"].update(train)
    (project / "params.yaml").write_text(yaml.safe_dump(p))


@pytest.fixture(scope="module")
def reported(tmp_path_factory, tracking_uri):
    """Two finished pipeline runs, one failed run and a 2-trial study in experiment 'report-tests'."""
    import os

    from conftest import tiny_params
    project = tmp_path_factory.mktemp("report")
    old = os.getcwd()
    os.chdir(project)
    try:
        p = tiny_params(tracking={"enabled": True, "experiment": "report-tests", "log_every": 20})
        p["train"]["epochs"] = 2
        (project / "params.yaml").write_text(yaml.safe_dump(p))
        (project / "experiments").mkdir()
        (project / "experiments/tune_space.yaml").write_text("train.lr: {type: float, low: 0.001, high: 0.01, log: true}\n")
        assert run_cli("prepare").exit_code == 0
        for lr in (0.002, 0.005):
            set_params(project, lr=lr)
            for stage in ("train", "evaluate", "visualize"):
                r = run_cli(stage)
                assert r.exit_code == 0, r.stderr
        client = mlflow.MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name("report-tests")
        failed = client.create_run(exp.experiment_id, run_name="broken")
        client.set_terminated(failed.info.run_id, "FAILED")
        set_params(project, lr=0.002)
        assert run_cli("tune", "--trials", "2").exit_code == 0
        r = run_cli("report", "--sort-by", "AP50")
        assert r.exit_code == 0, r.stderr
        return project, client, exp
    finally:
        os.chdir(old)


@pytest.mark.slow
def test_leaderboard_rows_order_and_numbers_match_mlflow(reported):
    project, client, exp = reported
    md = (project / "reports/report.md").read_text()
    runs = [r for r in client.search_runs([exp.experiment_id])
            if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("fcos_role") != "study"]
    assert len(runs) == 3
    finished = sorted((r for r in runs if "test/AP50" in r.data.metrics),
                      key=lambda r: -r.data.metrics["test/AP50"])
    board = [line for line in md.splitlines() if line.startswith("| ") and "backbone" not in line]
    assert len(board) == 3
    for line, run in zip(board, finished):
        cells = [c.strip(" *") for c in line.strip("|").split("|")]
        assert cells[0] == run.info.run_name
        assert cells[2] == run.data.params["train.lr"]
        assert cells[5] == f"{run.data.metrics['test/AP50']:.3f}"
    last = [c.strip() for c in board[-1].strip("|").split("|")]
    assert last[0] == "broken" and last[-2] == "FAILED" and last[4] == "—"      # missing metrics marked
    assert "## Tuning" in md and "'COMPLETE': 2" in md
    assert "dvc exp run" in md and "## Detections of the best run" in md


@pytest.mark.slow
def test_html_is_self_contained_and_renders_in_chromium(reported, tmp_path):
    project, _, _ = reported
    page = project / "reports/report.html"
    text = page.read_text()
    assert "src=\"http" not in text and "<link" not in text and text.count("data:image/png;base64,") >= 3
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert dom.stdout.count("<tr class=") == 3 and "broken" in dom.stdout and dom.stdout.count("<img") >= 3
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
                   capture_output=True, text=True, timeout=120)
    img = Image.open(shot).convert("L")
    assert len(img.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20     # not blank


def test_no_runs_is_a_clear_message(project):
    r = run_cli("report", "--experiment", "nothing-here")
    assert r.exit_code == 0 and "no runs in MLflow experiment 'nothing-here'" in r.stderr
    assert "no runs" in (project / "reports/report.html").read_text()


def test_bad_sort_metric_is_one_line(project):
    r = run_cli("report", "--sort-by", "speed")
    assert r.exit_code == 2 and "--sort-by must be one of" in r.stderr
