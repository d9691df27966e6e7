"""`fcos-exp`: the command line (typer + rich). Heavy imports happen inside the commands, so --help is instant."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import UserError, machine_problem
from .paths import MODEL, ONNX_MODEL, PARAMS, PENDING_FILE, PREDICTIONS, REPORTS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="The params file (or an overlay of it: a file "
                                                                  "with `base: params.yaml` and the keys it changes).")]


@contextmanager
def _user_errors(interrupted: str = "interrupted"):
    """Problems with the user's input or machine (a bad file, a full disk, a diverging training) become one
    line on stderr and exit code 2; anything else is a bug in fcos-exp, also one line, saying so (exit 1).
    FCOS_EXP_DEBUG=1 shows the traceback of either."""
    from fcos.errors import InputError  # light: the library's base of input errors (DataError too)
    try:
        yield
    except KeyboardInterrupt as e:
        typer.echo(interrupted.replace("interrupted", "terminated", 1) if isinstance(e, Terminated) else interrupted,
                   err=True)
        raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None
    except (UserError, InputError, OSError, FloatingPointError, MemoryError) as e:
        if os.environ.get("FCOS_EXP_DEBUG"):
            raise
        message = machine_problem(e)   # a loader worker killed mid-handover reaches us as an OSError
        if message is None:
            file = isinstance(e, OSError) and e.filename
            message = f"{e.filename}: {e.strerror}" if file else str(e) or type(e).__name__
        for line in message.splitlines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(getattr(e, "code", 2) if isinstance(e, UserError) else 2) from None
    except typer.Exit:   # a command's own exit code
        raise
    except Exception as e:
        if os.environ.get("FCOS_EXP_DEBUG"):
            raise
        if line := machine_problem(e):
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(2) from None
        first = (str(e).splitlines() or [""])[0][:300]
        typer.echo(f"error: internal error, a bug in fcos-exp: {type(e).__name__}: {first} (FCOS_EXP_DEBUG=1 shows "
                   "the traceback; please report it)", err=True)
        raise typer.Exit(1) from None


def _version(value: bool) -> None:
    """--version: this package's version and the torch stack it runs on (what a bug report needs)."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version
    try:
        ours = version("fcos-exp")
    except PackageNotFoundError:
        ours = "unknown (not installed)"
    import platform

    import torch
    import torchvision
    cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s) visible" if torch.version.cuda else "no CUDA"
    typer.echo(f"fcos-exp {ours}\ntorch {torch.__version__}, torchvision {torchvision.__version__} ({cuda})\n"
               f"Python {platform.python_version()} on {platform.platform()}")
    raise typer.Exit()


VersionOpt = Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and the torch/CUDA in use, then exit.")]


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler's stop), raised where the program is, so that cleanups run as for Ctrl-C:
    the last steps reach MLflow, runs are closed, temp files removed."""


def _terminate(signum, frame):
    raise Terminated()


@app.callback()
def _main(version: VersionOpt = False):
    """FCOS object detection experiments: prepare -> train -> evaluate -> visualize, tracked in MLflow,
    tuned with Optuna."""
    import signal
    signal.signal(signal.SIGTERM, _terminate)


def _setup(params_path: Path):
    from .params import load_params
    from .progress import stderr_console
    return load_params(params_path), stderr_console()


def _run_stage(name: str, params_path: Path, *args, **kwargs):
    """Load and validate the params, then run pipeline/stages/<name>.py, turning bad input into one line."""
    import importlib
    resume = "interrupted: the last checkpoint is kept; `fcos-exp train --resume` continues"
    with _user_errors(resume if name == "train" else f"interrupted: run `fcos-exp {name}` again"):
        p, console = _setup(params_path)
        return importlib.import_module(f"{__package__}.stages.{name}").run(p, console, *args, **kwargs)


@app.command()
def prepare(params: ParamsOpt = PARAMS):
    """Generate or read the dataset, check the annotations, write COCO json per split (data/prepared/)."""
    _run_stage("prepare", params)


@app.command()
def train(params: ParamsOpt = PARAMS,
          resume: Annotated[bool, typer.Option(help="Continue from models/model.pt.")] = False):
    """Train the detector (models/model.pt, metrics/train.json, plots/train_steps.csv). DDP under torchrun."""
    _run_stage("train", params, resume=resume)


@app.command()
def evaluate(params: ParamsOpt = PARAMS):
    """COCO mAP of the trained model on the test split (metrics/eval.json)."""
    _run_stage("evaluate", params)


@app.command()
def visualize(params: ParamsOpt = PARAMS):
    """Training curves, per-class AP and detection images (plots/)."""
    _run_stage("visualize", params)


@app.command()
def predict(inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
            out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = PREDICTIONS,
            score_thresh: Annotated[Optional[str], typer.Option(
                help="Minimum score drawn and written: a number, or f1 for each class's F1-optimal threshold "
                     "(metrics/pr.json); default visualize.score_thresh.")] = None,
            model: Annotated[Optional[Path], typer.Option(help="A checkpoint (.pt) or an exported ONNX graph (.onnx, "
                                                               "run by onnxruntime); default the one eval.checkpoint "
                                                               "names (models/model.pt or models/best.pt).")] = None,
            params: ParamsOpt = PARAMS):
    """Detect objects in images: annotated PNGs and detections.json in --out."""
    _run_stage("predict", params, inputs, out, score_thresh, model)


@app.command()
def export(model: Annotated[Path, typer.Option(help="The checkpoint exported.")] = MODEL,
           out: Annotated[Path, typer.Option("--out", "-o", help="The ONNX file written.")] = ONNX_MODEL,
           check: Annotated[int, typer.Option(help="Test images on which onnxruntime is compared with PyTorch "
                                                   "(0: none).")] = 8,
           params: ParamsOpt = PARAMS):
    """Export the trained model to ONNX (opset 18, any image size, decoding and NMS inside the graph)."""
    _run_stage("export", params, model, out, check)


@app.command()
def use(config: Annotated[Path, typer.Argument(help="A config of experiments/ (an overlay of params.yaml).")],
        params: ParamsOpt = PARAMS):
    """Write a config's values into params.yaml (comments kept), so that `dvc repro` / `dvc exp run` run it."""
    with _user_errors():
        from .params import read_params, set_values
        from .params_schema import flatten
        from .progress import stderr_console
        current, wanted = flatten(read_params(params)), flatten(read_params(config))
        values = {k: v for k, v in wanted.items() if current.get(k) != v}
        set_values(params, values)
        stderr_console().print(f"{params}: {len(values)} values set from {config}; `dvc repro` runs it "
                               f"(`git diff {params}` shows them)")


@app.command()
def sync(params: ParamsOpt = PARAMS):
    """Send tracking data kept in models/mlflow_pending.jsonl while the MLflow server was unreachable."""
    with _user_errors():
        _setup(params)
        from .tracking import sync_pending
        sent, ids, dropped, stores = sync_pending()
        if not sent and not dropped:
            typer.echo(f"nothing to sync ({PENDING_FILE} is absent)", err=True)
        else:
            typer.echo(f"sent {sent} tracking operations to {', '.join(stores)}"
                       + (f"; new runs: {', '.join(ids.values())}" if ids else "")
                       + (f"; dropped {dropped} of runs that no longer exist" if dropped else ""), err=True)


@app.command()
def tune(trials: Annotated[Optional[int], typer.Option(min=1, help="Trials of the whole study (default tune.trials)."
                                                       )] = None,
         storage: Annotated[Optional[str], typer.Option(help="Optuna storage: a journal file or an RDB URL.")] = None,
         study_name: Annotated[Optional[str], typer.Option(help="Study name (default tune.study_name).")] = None,
         workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine, sharing the study "
                                                          "and the cores.")] = 1,
         threads: Annotated[Optional[int], typer.Option(min=1, help="Torch threads per worker (default: the cores "
                                                                    "divided by --workers; 1 worker: torch's own).")
                            ] = None,
         apply: Annotated[bool, typer.Option("--apply", help="Write the best params found into --params.")] = False,
         worker_of: Annotated[Optional[str], typer.Option(hidden=True)] = None,
         worker_index: Annotated[int, typer.Option(hidden=True)] = 0,
         params: ParamsOpt = PARAMS):
    """Search the training configuration with Optuna (TPE + pruning); every trial is a nested MLflow run.
    Running it again continues the study; SIGINT/SIGTERM stop it cleanly (the running trial is queued again)."""
    with _user_errors():
        p, console = _setup(params)
        from .tuning import signals, study
        from .tuning import workers as pool
        if apply:
            record = study.apply_best(params)
            console.print(study.applied_line(params, record), markup=False, highlight=False)
            return
        if threads is None and workers > 1:
            threads = pool.threads_per_worker(workers)
        if threads is not None:
            pool.set_threads(threads)
        try:
            if worker_of is not None:   # one of the processes of --workers (tuning/workers.py)
                from .tuning.display import Display
                display = Display(console, p.tune.metric, p.train.epochs)
                result = study.run_worker(p, display, trials, storage, study_name,
                                          None if worker_of == "-" else worker_of, worker_index)
            else:
                result = study.run_study(p, console, trials, storage, study_name, str(params), workers, threads)
        except signals.Interrupted as e:   # a second signal: stopped at once
            typer.echo(f"stopped by {e}; run the same command again to continue the study", err=True)
            raise typer.Exit(128 + e.signum) from None
        if result.get("interrupted"):
            import signal
            raise typer.Exit(128 + signal.Signals[result["interrupted"]].value)
        if result.get("worker_errors"):
            raise typer.Exit(1)


@app.command()
def report(experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment (default tracking.experiment)."
                                                             )] = None,
           filter_tag: Annotated[Optional[str], typer.Option(help="Only runs with this tag, key=value.")] = None,
           status: Annotated[Optional[str], typer.Option(help="Only runs in this state: FINISHED, FAILED, KILLED, "
                                                              "RUNNING.")] = None,
           last: Annotated[Optional[int], typer.Option(help="Only the N most recent runs.")] = None,
           sort_by: Annotated[str, typer.Option(help="Leaderboard metric: a test stat (AP50, AP, ...), "
                                                     "ms_per_image or train_seconds.")] = "AP50",
           baseline: Annotated[Optional[str], typer.Option(help="Run id, id prefix or name for the deltas "
                                                                "(default: the oldest).")] = None,
           out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = REPORTS,
           storage: Annotated[Optional[str], typer.Option(help="Optuna storage of the study (default tune.storage)."
                                                          )] = None,
           study_name: Annotated[Optional[str], typer.Option(help="Optuna study (default tune.study_name).")] = None,
           resamples: Annotated[Optional[int], typer.Option(min=2, help="Bootstrap resamples of the test images "
                                                                        "for the intervals (default 1000).")] = None,
           seed: Annotated[Optional[int], typer.Option(help="Seed of the resampling (default 0).")] = None,
           params: ParamsOpt = PARAMS):
    """Write reports/report.md and a self-contained reports/report.html comparing the tracked runs.
    No matching run is not an error: the report says so and the exit code is 0."""
    with _user_errors():
        p, console = _setup(params)
        from .report import run as build
        build(p, console, experiment, filter_tag, status, last, sort_by, baseline, out, storage, study_name,
              resamples, seed)


@app.command()
def compare(a: Annotated[str, typer.Argument(help="Run A: an MLflow run id, id prefix, run name or dvc exp name.")],
            b: Annotated[str, typer.Argument(help="Run B, the same way.")],
            seeds: Annotated[bool, typer.Option("--seeds", help="Compare the groups of seed repeats of A and B (runs "
                                                                "whose params differ only in train.seed).")] = False,
            resamples: Annotated[Optional[int], typer.Option(min=2, help="Bootstrap resamples of the test images "
                                                                  "(default 1000).")] = None,
            seed: Annotated[Optional[int], typer.Option(help="Seed of the resampling (default 0).")] = None,
            as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
            experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment (default tracking.experiment)."
                                                              )] = None,
            params: ParamsOpt = PARAMS):
    """Is B better than A? B - A of AP, AP50 and each class's AP50 with a 95% paired bootstrap interval over
    the test images, from the detections the runs kept; "within noise" when the interval holds 0."""
    with _user_errors():
        p, console = _setup(params)
        from .compare import run as run_compare
        run_compare(p, console, a, b, seeds, resamples, seed, as_json, experiment)


@app.command()
def seeds(n: Annotated[int, typer.Argument(min=1, help="How many seeds: train.seed = FIRST .. FIRST + N - 1.")],
          first: Annotated[int, typer.Option(help="The first seed.")] = 0,
          queue: Annotated[bool, typer.Option("--queue", help="Only queue the experiments (`dvc queue start` or "
                                                              "`dvc exp run --run-all` runs them).")] = False,
          name: Annotated[Optional[str], typer.Option(help="Name the experiments NAME-seed<k>.")] = None,
          set_values: Annotated[Optional[list[str]], typer.Option(
              "--set", "-S", help="KEY=VALUE on top of params.yaml (repeatable), as `dvc exp run -S`.")] = None):
    """Run the configuration of params.yaml (committed or not) with N seeds as DVC experiments, one after another
    in temporary folders (the workspace is left as it is); `fcos-exp compare --seeds` and the report pool them."""
    with _user_errors():
        from .progress import stderr_console
        from .seeds import run_seeds
        run_seeds(n, first, queue, name, stderr_console(), set_values or [])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
