"""Running a study: the trial loop every worker runs (an exact number of trials however many workers share
the storage), the MLflow parent run, the figures and the best params (experiments/best_params.yaml,
`--apply` writes them into params.yaml)."""
from __future__ import annotations

import time
import uuid
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..artifacts import write_text
from ..errors import UserError
from ..mpl import save
from ..params import read_text_file, set_values
from ..paths import BEST_PARAMS, TUNING_FIGURES
from ..tracking import Tracker, find_run, tracking_uri
from . import signals
from .display import Display, baseline_of, best_of, summary
from .objective import COUNTED, Objective
from .space import baseline_values, load_space, short_params
from .storage import dashboard_command, journal_path, retry_dead_local_trials, shown_url, storage_for, study_lock

if TYPE_CHECKING:
    from ..params_schema import Params

PRUNE_FROM = 25    # percent of a trial's schedule before the pruner first judges it (objective.py's steps)
REDUCTION = 3      # successive halving / Hyperband: the best third of the trials at a rung goes on
STUDY_UID = "optuna_study_uid"   # a study's user attr and its parent run's tag: which run is the study's
SETUP_WAIT = 30.0  # seconds a command that found a brand-new study waits for its creator to set it up


def study_figures(study, out: Path) -> list[Path]:
    """out/tuning_{history,importances,intermediate}.png: optimisation history (>= 1 complete trial),
    parameter importances (>= 2), intermediate values (any reported)."""
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    intermediate = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    wanted = [("history", ovm.plot_optimization_history, complete >= 1),
              ("importances", ovm.plot_param_importances, complete >= 2),
              ("intermediate", ovm.plot_intermediate_values, intermediate)]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, plot, possible in wanted:
        if not possible or len(study.directions) > 1:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")     # the matplotlib backend is "experimental"
                ax = plot(study)
        except Exception:   # e.g. importances of a parameter that never varied
            continue
        fig = (ax if hasattr(ax, "figure") else ax.flat[0]).figure
        fig.set_size_inches(6.4, 3.8)
        paths.append(save(fig, out / f"tuning_{name}.png", dpi=90))
    return paths


def write_best(study, metric: str, train_fraction: float) -> Path | None:
    best = best_of(study)
    if best is None:
        return None
    base = baseline_of(study)
    record = {"study": study.study_name, "trial": best.number, "metric": metric, "value": float(best.value),
              "params": dict(best.params), "train_fraction": train_fraction,
              "baseline": None if base is None or base.value is None else
              {"trial": base.number, "value": float(base.value), "params": dict(base.params)}}
    write_text(BEST_PARAMS, yaml.safe_dump(record, sort_keys=False))
    return BEST_PARAMS


def apply_best(params_path: Path) -> dict:
    """Write the best params into params.yaml in place, keeping its comments and layout; returns the
    best_params.yaml record."""
    if not BEST_PARAMS.is_file():
        raise UserError(f"{BEST_PARAMS}: not found; run `fcos-exp tune` first")
    try:
        record = yaml.safe_load(read_text_file(BEST_PARAMS))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{BEST_PARAMS}: not valid YAML ({str(e).splitlines()[0]}); run `fcos-exp tune` again") \
            from None
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict):
        raise UserError(f"{BEST_PARAMS}: not a best-params file of `fcos-exp tune` (no params mapping)")
    set_values(params_path, record["params"])
    return record


def applied_line(params_path, record: dict) -> str:
    """What `--apply` did, with the best trial's value beside trial 0's (the params before)."""
    values = ", ".join(f"{k}={v}" for k, v in record["params"].items())
    fraction = record.get("train_fraction", 1)
    base = record.get("baseline")
    return (f"{params_path}: set {values} (trial {record.get('trial')}: {record.get('metric')} "
            f"{record.get('value', float('nan')):.4f}"
            + (f" on {fraction:.0%} of the training images" if fraction < 1 else "")
            + (f"; the params before, trial {base['trial']}: {base['value']:.4f}" if base else "")
            + "); `dvc repro` trains it on the whole training split")


def make_pruner(kind: str):
    """Steps are percent of a trial's schedule (objective.py): judged from PRUNE_FROM %, best 1/REDUCTION on."""
    import optuna
    return {"asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=PRUNE_FROM,
                                                                   reduction_factor=REDUCTION),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=PRUNE_FROM, max_resource=100,
                                                                reduction_factor=REDUCTION),
            "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=PRUNE_FROM - 1),
            "none": optuna.pruners.NopPruner}[kind]()


def count(study, states=COUNTED) -> int:
    return sum(t.state.name in states for t in study.get_trials(deepcopy=False))


class Study:
    """One process's view of the study: its storage, the Optuna study, the display; `work` runs trials."""

    def __init__(self, params: Params, display: Display, trials: int | None, storage: str | None,
                 study_name: str | None, seed_offset: int = 0):
        import optuna
        optuna.logging.set_verbosity(optuna.logging.ERROR)   # our display says what Optuna would log
        self.params, self.display, t = params, display, params.tune
        self.space = load_space(t.space, params)
        self.n_trials = t.trials if trials is None else trials
        self.name, self.url = study_name or t.study_name, storage or t.storage
        backend = storage_for(self.url, t.heartbeat_seconds, on_stale=lambda s, tr: self._dead([tr]))
        with warnings.catch_warnings():   # constant_liar is "experimental"; it keeps workers apart
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=t.seed + seed_offset, n_startup_trials=t.startup_trials,
                                                 constant_liar=True)
        made = dict(storage=backend, sampler=sampler, pruner=make_pruner(t.pruner), study_name=self.name,
                    direction=t.direction)
        try:
            try:   # creating is atomic in every storage: exactly one command sets a new study up (prepare)
                self.study, self.created = optuna.create_study(**made), True
            except optuna.exceptions.DuplicatedStudyError:
                self.study, self.created = optuna.create_study(**made, load_if_exists=True), False
        except (ValueError, KeyError, TypeError) as e:   # a study of another direction, a corrupt journal
            raise UserError(f"{self.shown}: not a usable Optuna storage for study '{self.name}' "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})") from None

    @property
    def shown(self) -> str:
        path = journal_path(self.url)
        return shown_url(self.url) if path is None else str(path)

    def prepare(self) -> None:
        """Say what runs; check the study's fidelity; a new study gets the current params as its first trial."""
        t = self.params.tune
        fraction = t.train_fraction
        self.display.line(f"study '{self.name}' in {self.shown}: {count(self.study, ('COMPLETE', 'PRUNED'))} of "
                          f"{self.n_trials} trials done; trials train on {fraction:.0%} of the training images and "
                          f"validate on data/prepared/val.json every epoch ({t.metric}, pruner {t.pruner})")
        if not self.created:
            self._wait_for_setup()
        with study_lock(self.url):
            earlier = self.study.user_attrs.get("train_fraction")
            if earlier is not None and earlier != fraction:
                raise UserError(f"{self.shown}: study '{self.name}' ran its trials with tune.train_fraction "
                                f"{earlier}, not {fraction}: set it back or use another --study-name")
            if earlier is None:
                self.study.set_user_attr("train_fraction", fraction)
            if not self.study.get_trials(deepcopy=False):
                values, why = baseline_values(self.params, self.space)
                if values is None:
                    self.display.line(f"no trial of the current params: {why}")
                else:
                    self.study.enqueue_trial(values, user_attrs={"baseline": True})
                    self.display.line(f"trial 0 is the current params ({short_params(values)}): what they score "
                                      "at this fidelity on the same validation split")
            if STUDY_UID not in self.study.user_attrs:   # last: its presence says the study is set up
                self.study.set_user_attr(STUDY_UID, uuid.uuid4().hex)

    def _wait_for_setup(self) -> None:
        """Wait for the command that created the study to set it up (its uid, written last). A journal's lock
        already orders the two; an RDB storage has no lock, and two commands started together on machines
        sharing a new study would otherwise both enqueue the baseline and each write its own uid. A study
        whose trials have run was set up, or comes from before uids; a creator gone for SETUP_WAIT left it
        to us."""
        start = time.monotonic()
        told = False
        while STUDY_UID not in self.study.user_attrs and time.monotonic() < start + SETUP_WAIT:
            if any(t.state.name != "WAITING" for t in self.study.get_trials(deepcopy=False)):
                return
            if not told and time.monotonic() > start + 1:
                told = True
                self.display.line(f"waiting for the command that created study '{self.name}' to set it up "
                                  f"(at most {SETUP_WAIT:.0f} s)")
            time.sleep(0.2)

    def recover(self) -> None:
        """Fail and queue again the trials of dead workers (journal: this host's processes; RDB: heartbeats)."""
        import optuna
        self._dead(retry_dead_local_trials(self.study))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def _dead(self, trials) -> None:
        """Trials whose worker died: their MLflow runs end as KILLED (not RUNNING forever)."""
        for t in trials:
            self.display.line(f"trial {t.number}: its worker ({t.user_attrs.get('worker', '?')}) died; "
                              "marked FAIL and queued again")
            run_id = t.user_attrs.get("mlflow_run_id")
            if run_id and not run_id.startswith("pending-"):
                with Tracker(self.params, False, run_id=run_id, remember=False) as run:
                    run.set_tags({"optuna_state": "FAIL", "stopped_by": "worker died"})
                    run.status = "KILLED"

    def work(self, parent_run: str | None) -> None:
        """Run trials until the study has n_trials COMPLETE + PRUNED + RUNNING ones (so N workers never
        exceed it: the count and the start of a trial happen under study_lock); failed trials do not count,
        at most 3x as many attempts as places left. Raises signals.Interrupted after a stop signal."""
        objective = Objective(self.params, self.space, self.study, parent_run, self.display, self.n_trials)
        attempts = 3 * max(1, self.n_trials - count(self.study, ("COMPLETE", "PRUNED")))
        for _ in range(attempts):
            signals.check()
            with ExitStack() as held:
                held.enter_context(study_lock(self.url))
                self.recover()
                if count(self.study) >= self.n_trials:
                    return
                objective.started = held.close
                self.study.optimize(objective, n_trials=1, callbacks=[self.display.trial])

    def result(self, **extra) -> dict:
        from optuna.trial import TrialState
        best = best_of(self.study)
        states = {s.name: len(self.study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
        return {"best": None if best is None else {"value": best.value, "params": best.params}, "states": states,
                "storage": self.shown, "dashboard": dashboard_command(self.url), "mlflow": tracking_uri(),
                "done": states["COMPLETE"] + states["PRUNED"], "wanted": self.n_trials, **extra}


def run_worker(params: Params, display: Display, trials, storage, study_name, parent_run: str | None,
               index: int) -> dict:
    """A worker process of `--workers N` (started by workers.py): trials only, no summary."""
    s = Study(params, display, trials, storage, study_name, seed_offset=index)
    try:
        with signals.graceful_stop(announce=False):
            s.work(parent_run)
    except signals.Interrupted as e:
        return s.result(interrupted=str(e))
    return s.result()


def run_study(params: Params, console, trials: int | None, storage: str | None, study_name: str | None,
              params_path: str = "params.yaml", workers: int = 1, threads: int | None = None) -> dict:
    """The whole study from this command: one worker here, or `workers` processes (workers.py) each
    started with `params_path`."""
    from .workers import run_workers
    t = params.tune
    display = Display.for_console(console, t.metric, params.train.epochs)
    s = Study(params, display, trials, storage, study_name)
    s.prepare()
    # Later runs of the same study reuse its parent run; the uid keeps apart two studies of one name (two
    # projects, or a study deleted and begun again) that track into the same MLflow experiment.
    tags = {"optuna_study": s.name, "fcos_role": "study", STUDY_UID: s.study.user_attrs[STUDY_UID]}
    parent_id = find_run(params, tags)
    start, interrupted, worker_errors = time.perf_counter(), None, 0
    with Tracker(params, parent_id is None, run_id=parent_id, name=f"tune-{s.name}", tags=tags,
                 remember=False) as parent:
        if parent_id is None:   # a command started at the same moment on this new study may have made one too
            parent.give_way(find_run(params, tags, first=True))
        link = dashboard_command(s.url)
        parent.set_tags({"optuna_storage": s.shown, "optuna_dashboard": link,
                         "tune.train_fraction": t.train_fraction,
                         "mlflow.note.content": f"Optuna study '{s.name}' in {s.shown}; each trial is a child run "
                                                f"of this one. See the study: `{link}`"})
        if workers > 1:
            display.line(f"{workers} workers x {threads} torch threads")
        display.start(s.study)
        try:
            if workers > 1:
                interrupted, worker_errors = run_workers(params_path, display, s, parent.run_id, workers, threads)
            else:
                with signals.graceful_stop():
                    s.work(parent.run_id)
        except signals.Interrupted as e:
            interrupted = str(e)
        finally:
            display.stop()
        s.recover()   # a worker killed outright leaves its trial RUNNING
        if interrupted:
            parent.status = "KILLED"
        best = best_of(s.study)
        if best is not None:
            parent.log_metrics({f"best_{t.metric}": best.value})
            parent.set_tags({f"best.{k}": v for k, v in best.params.items()})
        for path in study_figures(s.study, TUNING_FIGURES / s.name):
            parent.log_artifact(path, "optuna")
    result = s.result(interrupted=interrupted, worker_errors=worker_errors,
                      best_file=write_best(s.study, t.metric, t.train_fraction))
    summary(display, s.study, result, time.perf_counter() - start)
    return result
