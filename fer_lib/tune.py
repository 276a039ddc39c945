"""Optuna search over the training recipe, scored on PublicTest only; its finalists retrained at full budget.

    fer tune --config configs/profiles/full.yaml --data data/fer2013.h5 --out runs/tune   # search, then finalists
    fer tune --data data/fer2013.h5 --out runs/tune --worker 1 --threads 1   # a 2nd process on the same study
    fer tune --storage postgresql://user:pw@host/db --study fer --worker 3   # on each of many machines
    fer train --data data/fer2013.h5 --config runs/tune/best_params.json     # the chosen recipe, at full budget
    fer tune --config configs/profiles/full.yaml --out runs/tune --status   # its trials and what is left; writes nothing

Each trial trains with fer_lib.train's engine on Training (a proxy: fewer epochs than the
final run, its schedule stretched over them), reports PublicTest accuracy every epoch so that
successive halving stops weak trials early, and returns its best PublicTest accuracy. Two reference
trials always run to the end: the engine's untuned default and the recipe searched around.
Then the finalists (the references and the `final_top` best trials) are retrained at the
recipe's own epochs, and the rank correlation of proxy and final scores shows whether the
proxy ranked recipes right. PrivateTest is never read. `--n-trials` is the study's total of
finished (complete or pruned) trials, shared by all workers; rerunning resumes a killed study,
and a killed trial goes on after its last finished epoch (objective, retry_trial).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState
from scipy.stats import spearmanr

from . import train
from .chain import KEPT, keyed_fit
from .data import read_info
from .environment import describe_environment, describe_machine
from .errors import UserError, check_output_path
from .flags import add_dataclass_arguments, check_settings, dataclass_from_arguments, setting
from .io import mask_url, pid_alive, read_config, write_atomic
from .models import create_model, load_checkpoint
from .progress import in_notebook
from .train import TrainConfig, resolve_config

JOURNAL = "optuna.journal"   # a search's storage in its run folder, unless given another
SEARCH_ATTRS = ("data_sha256", "epochs_per_trial", "train_fraction", "seed", "base_config", "final")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what n_trials counts


PRUNERS = ("halving", "hyperband", "median", "none")


@dataclasses.dataclass
class TuneConfig:
    """The search's budget and machinery; the recipe it searches around is a TrainConfig (the profile's
    `train` section)."""
    n_trials: int = setting(30, low=0)  # finished (complete or pruned) trials in the study, all workers together
    timeout: float | None = setting(2400, low=0.0)  # seconds of search, all sittings together; then no new trial (None: no limit)
    epochs_per_trial: int = setting(9, low=1)  # a trial's budget: its schedule spans these epochs (the proxy of the final run)
    min_epochs: int = setting(3, low=1)  # halving, hyperband: the epochs every trial gets before it may be stopped
    reduction_factor: int = setting(3, low=2)  # halving, hyperband: 1/this of the trials go on at each rung (min_epochs x this^k)
    train_fraction: float = setting(1.0, above=0.0, high=1.0)  # stratified share of Training each trial trains on
    pruner: str = setting("halving", choices=PRUNERS)  # halving | hyperband | median | none (create_pruner)
    workers: int = setting(1, low=1)  # processes on this machine sharing the study, one thread each
    final_top: int = setting(3, low=0)  # then retrain the best trials and both references at the final budget (0: no)
    final_epochs: int | None = setting(None, low=1)  # the final budget; None: the recipe's own epochs (the train section's)
    study_name: str = "fer"           # workers (and reruns) with the same storage and name share the study
    seed: int = setting(0, low=0)     # seeds the TPE sampler and every trial's training
    base: dict = dataclasses.field(default_factory=dict)  # changes to the train recipe for the search (search_recipe)

    def __post_init__(self):
        check_settings(self)
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(self.base) - names)
        if unknown:
            raise UserError(f"tune.base: {unknown[0]!r} is not a TrainConfig field")


def search_recipe(recipe: TrainConfig, budget: TuneConfig) -> TrainConfig:
    """The recipe the search starts from: the profile's train recipe with budget.base's changes, so that a
    profile whose accurate model is hours an epoch can search (and retrain its finalists) on a cheaper one."""
    return dataclasses.replace(recipe, **budget.base)


HEARTBEAT_S = 60  # RDB storages: a trial silent for 2 heartbeats is failed (a worker died on another machine)


def suggest_config(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """The search space. Every parameter name is a TrainConfig field, so trial.params is a config.
    Nothing here is in absolute epochs: schedules span the run's budget (StepLR by share of it)."""
    trial.suggest_categorical("optimizer", ["sgd", "adam", "rmsprop"])
    # One range for every optimizer, Adam's good steps and SGD's (our default is 0.05) both in it: a range
    # that depends on the optimizer would make multivariate TPE drop lr from its joint model (a parameter
    # whose distribution changes leaves Optuna's intersection search space), and sample lr alone.
    trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    trial.suggest_categorical("batch_size", [32, 64, 128, 256])
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    scheduler = trial.suggest_categorical("scheduler", ["onecycle", "cosine", "step"])
    if scheduler == "step":
        trial.suggest_float("step_fraction", 0.1, 0.5)  # decay every 10-50% of the run
        trial.suggest_float("gamma", 0.1, 0.9)
    trial.suggest_categorical("model", ["vgg_small", "baseline", "improved", "resnet_small"])
    trial.suggest_categorical("width_mult", [0.75, 1.0, 1.25, 1.5])
    trial.suggest_categorical("activation", ["relu", "leaky_relu", "elu"])
    trial.suggest_float("drop_rate", 0.0, 0.6)
    trial.suggest_float("stage_drop", 0.0, 0.3)
    trial.suggest_float("label_smoothing", 0.0, 0.2)
    trial.suggest_float("augment", 0.0, 1.5)  # strength of shift/rotation/scale
    trial.suggest_float("erase", 0.0, 0.5)    # random-erasing probability
    trial.suggest_categorical("crop", [0, 44])
    trial.suggest_categorical("mixup", [0.0, 0.2, 0.4])
    trial.suggest_categorical("cutmix", [0.0, 0.5, 1.0])
    trial.suggest_categorical("ema_decay", [0.0, 0.99, 0.998, 0.999])
    return dataclasses.replace(base, **trial.params)


SPACE = ("optimizer", "lr", "batch_size", "weight_decay", "scheduler", "model", "width_mult", "activation",
         "drop_rate", "stage_drop", "label_smoothing", "augment", "erase", "crop", "mixup", "cutmix", "ema_decay")


def default_params(cfg: TrainConfig) -> dict:
    """`cfg` as a point of the search space, the model's own dropouts spelt out; raises ValueError
    when cfg lies outside the space (a StepLR in absolute epochs counts as its share of cfg.epochs)."""
    params = {k: getattr(cfg, k) for k in SPACE}
    model = create_model(cfg.model, **train.model_kwargs(cfg))
    params["drop_rate"] = float(next(m.p for m in model.modules() if type(m) is torch.nn.Dropout))
    params["stage_drop"] = float(next((m.p for m in model.modules() if type(m) is torch.nn.Dropout2d), 0.0))
    if cfg.scheduler == "step":
        params.update(step_fraction=cfg.step_fraction or cfg.step_size / cfg.epochs, gamma=cfg.gamma)
    suggest_config(optuna.trial.FixedTrial(params), cfg)  # raises if the space asks for another name
    return params


REFERENCES = ("default", "recipe")  # the engine's untuned default (TrainConfig), the recipe searched around


def trial_run_dir(trial, base: TrainConfig) -> Path:
    """Where a trial keeps its last.pt while it runs: OUT/trials/<study>/trial_<n>, n being the number of
    the trial it retries, if any, so that a retry finds the killed trial's epochs."""
    first = trial.user_attrs.get("retry_of", trial.number)
    return Path(base.out) / "trials" / trial.study.study_name / f"trial_{first}"


def objective(trial: optuna.Trial, base: TrainConfig) -> float:
    """Train one suggested config; the best PublicTest accuracy over its epochs. The reference
    trials are never pruned, so that each has a full-budget score to compare with.

    Every epoch goes to the trial's last.pt (trial_run_dir), so that a retry of a killed trial goes on
    after its last finished epoch, replaying the epochs before to the pruner; the checkpoint is
    deleted when the trial ends."""
    cfg = suggest_config(trial, base)
    run = trial_run_dir(trial, base)
    judged = judged_epochs(trial)
    try:
        s = train.setup(cfg)  # loads Training and PublicTest only
        trial.set_user_attr("machine", s.machine)  # a resumed study may span machines: where it ran, at which precision
        ck = _trial_checkpoint(run / "last.pt", cfg)
        history, best = train.restore(s, ck)[:2] if ck else ([], {"val_acc": -1.0, "epoch": 0})
        if ck:
            print(f"trial {trial.number} goes on after epoch {ck['epoch']} of trial {trial.user_attrs['retry_of']}",
                  flush=True)
        for epoch in range(1, cfg.epochs + 1):
            if epoch > len(history):
                row = train.run_epoch(s, epoch)
                history.append(row)
                if row["val_acc"] > best["val_acc"]:
                    best = {"val_acc": row["val_acc"], "val_loss": row["val_loss"], "epoch": epoch}
                train.save_atomic(train.checkpoint(s, epoch, history, best), run / "last.pt")
            trial.report(history[epoch - 1]["val_acc"], epoch)
            # no verdict at the last epoch: the trial is trained (Optuna's Hyperband would judge its top bracket there)
            if judged < epoch < cfg.epochs and trial.should_prune() and "reference" not in trial.user_attrs:
                raise optuna.TrialPruned()
    except KeyboardInterrupt:  # Optuna marks it FAIL: queue it again, to go on from its checkpoint
        retry_trial(trial.study, trial)
        raise
    except train.Diverged as e:  # a recipe that diverges is a bad point of the space, not a failure to retry
        trial.set_user_attr("diverged", str(e))
        print(f"trial {trial.number} pruned: {e}", flush=True)
        _forget(run)
        raise optuna.TrialPruned(str(e)) from None
    except optuna.TrialPruned:
        _forget(run)
        raise
    _forget(run)
    return best["val_acc"]


def judged_epochs(trial, study: optuna.Study | None = None) -> int:
    """The epochs that the failed trials this one retries reported, each judged by the pruner then: a
    kill does not change a verdict (a retry may meet more rivals, or another pruner, at a rung it passed).
    A FrozenTrial needs its study."""
    first = trial.user_attrs.get("retry_of")
    if first is None:
        return 0
    return max((max(t.intermediate_values, default=0) for t in (study or trial.study).get_trials(
                    deepcopy=False, states=(TrialState.FAIL,))
                if first in (t.number, t.user_attrs.get("retry_of"))), default=0)


def _forget(run: Path) -> None:
    """A finished trial's checkpoint, and OUT/trials/<study> and OUT/trials once they hold nothing."""
    shutil.rmtree(run, ignore_errors=True)
    for folder in (run.parent, run.parent.parent):
        try:
            folder.rmdir()
        except OSError:  # another trial's, or gone already
            break


def _trial_checkpoint(path: Path, cfg: TrainConfig) -> dict | None:
    """The trial's last.pt, if it was made with this very config (else the trial starts afresh). The
    data may have moved: the study holds its checksum (run_study)."""
    if not path.is_file():
        return None
    ck = load_checkpoint(path)
    if not train.changed_fields(ck, cfg, ignore=("data",)):
        return ck
    print(f"{path} was made with another configuration: the trial starts afresh", flush=True)
    return None


# ----------------------------------------------------------------------------- storage and study

STORAGE_ENV = "FER_OPTUNA_STORAGE"  # a storage URL from the environment, when --storage is not given


def describe_storage(storage: str, out) -> str:
    """What a study is stored in, fit to print: the URL with its password masked, or the journal file."""
    storage = storage or os.environ.get(STORAGE_ENV, "")
    return mask_url(storage) if storage else str(Path(out).resolve() / JOURNAL)


def open_storage(storage: str):
    """A URL (sqlite:///x.db, postgresql://...) opens an RDB storage; anything else is a journal file."""
    if "://" in storage:
        import sqlalchemy
        given = storage
        if storage.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
            # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; our [postgres] extra installs psycopg2.
            storage = "postgresql+psycopg2://" + storage.removeprefix("postgresql://")
        for attempt in range(4):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_S,
                                                      heartbeat_stale_trial_callback=retry_trial)
            except sqlalchemy.exc.DBAPIError as e:  # workers starting together race to create the tables
                if attempt == 3:  # a database that is not there, or refuses us: the user's to fix
                    reason = mask_url(str(getattr(e, "orig", e))).strip().splitlines()[0]
                    raise UserError(f"{mask_url(given)}: cannot open this Optuna storage ({reason})") from None
                time.sleep(1 + attempt)
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))  # file locks: many processes, one machine


class HalvingPruner(optuna.pruners.BasePruner):
    """Successive halving, one bracket: at epochs min_epochs, reduction_factor times that, ... below
    max_epochs, a trial goes on only if it is among the best 1/reduction_factor of the trials (finished
    or running, itself too) that reported that epoch; until `reduction_factor` others have, it goes on.

    Why not Optuna's own: with HyperbandPruner, TPE learns only from the trials of the same bracket
    (optuna.pruners._filter_study), so two brackets mean two searches of half the trials each, one of them
    never pruned; SuccessiveHalvingPruner keeps its rungs in trial attributes, so a failed trial and its
    retry (retry_trial) both count, and a study that ran another pruner is misjudged. This one reads the
    reported accuracies only: a study may switch to it, and a retry replaces the failed trial."""

    def __init__(self, min_epochs: int, max_epochs: int | None = None, reduction_factor: int = 3):
        if min_epochs < 1 or reduction_factor < 2:
            raise ValueError(f"halving needs min_epochs >= 1 and reduction_factor >= 2, not {min_epochs} and "
                             f"{reduction_factor}")
        self.min_epochs, self.max_epochs, self.reduction_factor = min_epochs, max_epochs, reduction_factor

    def rungs(self, max_epochs: int) -> list[int]:
        """The epochs at which trials are judged, up to max_epochs."""
        out = [self.min_epochs]
        while out[-1] * self.reduction_factor <= max_epochs:
            out.append(out[-1] * self.reduction_factor)
        return [e for e in out if self.max_epochs is None or e < self.max_epochs]  # not at the end: it finished

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        epoch = trial.last_step
        if epoch is None or epoch not in self.rungs(epoch):
            return False
        value = trial.intermediate_values[epoch]
        others = [t.intermediate_values[epoch] for t in study.get_trials(deepcopy=False, states=FINISHED +
                                                                         (TrialState.RUNNING,))
                  if t.number != trial.number and epoch in t.intermediate_values]
        if np.isnan(value):
            return True
        if len(others) < self.reduction_factor:
            return False
        better = sum(v > value for v in others)
        return better >= -(-(len(others) + 1) // self.reduction_factor)  # not among the best ceil(n / factor)



def create_pruner(name: str, min_epochs: int = 1, max_epochs: int | str = "auto",
                  reduction_factor: int = 3) -> optuna.pruners.BasePruner:
    if name == "halving":  # the best 1/factor at min_epochs, factor x that, ... below the trial's budget
        return HalvingPruner(min_epochs, None if max_epochs == "auto" else max_epochs, reduction_factor)
    if name == "median":  # below the median of earlier trials at the same epoch; epoch 1 is too noisy
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "hyperband":  # brackets of successive halving; TPE then learns within a bracket only
        return optuna.pruners.HyperbandPruner(min_resource=min_epochs, max_resource=max_epochs,
                                              reduction_factor=reduction_factor)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose {', '.join(PRUNERS)}")


def log_trials_to_stdout() -> None:
    """Optuna's trial log on stdout, without colour codes: in a notebook, stderr is drawn as an error."""
    logger = optuna.logging.get_logger("optuna")
    if not any(isinstance(h, logging.StreamHandler) and h.stream is sys.stdout for h in logger.handlers):
        optuna.logging.disable_default_handler()
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[%(levelname).1s %(asctime)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)


def create_study(storage, study_name: str = "fer", seed: int = 0, pruner: str = "median", min_epochs: int = 1,
                 max_epochs: int | str = "auto", worker: int = 0, reduction_factor: int = 3) -> optuna.Study:
    """Create or resume (load_if_exists) a maximizing study with a seeded TPE sampler.

    The sampler's seed is drawn from (seed, worker, trials in the study so far): parallel workers
    don't propose the same trials, and a resumed one doesn't draw its first trials again (a sampler
    seeded alike replays its random start), yet a study run the same way draws the same trials."""
    if in_notebook():
        log_trials_to_stdout()
    study = optuna.create_study(storage=open_storage(storage) if isinstance(storage, str) else storage,
                                study_name=study_name, direction="maximize",
                                pruner=create_pruner(pruner, min_epochs, max_epochs, reduction_factor),
                                load_if_exists=True)
    start = np.random.SeedSequence([seed, worker, len(study.get_trials(deepcopy=False))])
    # constant_liar: parallel workers don't all sample next to the same running trial. group: StepLR's
    # step_fraction and gamma, drawn only with StepLR, are modelled jointly too, in a group of their own.
    with warnings.catch_warnings():  # group is "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(seed=int(start.generate_state(1)[0]), multivariate=True,
                                                   group=True, constant_liar=True)
    return study


# ----------------------------------------------------------------------------- a budget shared by workers

def process_start(pid: int) -> str | None:
    """This boot's id and the process's start time (Linux /proc): what tells a worker from a later process
    that got its pid, pids being reused (after a reboot too); None where /proc has neither."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]  # field 22, starttime
    except (OSError, IndexError):
        return None
    return f"{boot}:{start}"


def _worker_alive(attrs: dict) -> bool:
    """Whether the process that claimed a trial on this host (user_attrs pid, process) still runs."""
    return pid_alive(attrs["pid"]) and attrs.get("process") in (None, process_start(attrs["pid"]))


def _worker_gone(attrs: dict, one_machine: bool = False) -> bool:
    """Whether the process that claimed a trial (user_attrs host, pid) is gone: a process of this host that no
    longer runs, or, in a study that one machine keeps (one_machine), any process of another host: the study
    was moved here (a database's workers on other machines are told by their heartbeats)."""
    if not attrs.get("pid"):
        return False
    return one_machine if attrs.get("host") != socket.gethostname() else not _worker_alive(attrs)


def _one_machine(study: optuna.Study) -> bool:
    """Whether the study is in a journal file, whose locks serve the processes of one machine (open_storage)."""
    return isinstance(study._storage, JournalStorage)  # Optuna has no public accessor of a study's storage


MAX_RETRIES = 3  # a trial whose worker dies again and again (out of memory, say) is given up after this many


def retry_trial(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial) -> None:
    """Queue a trial whose worker died again, with its parameters and role, marked as a retry of the
    first trial of its line (user_attrs retry_of, retries): its epochs so far are in that one's
    trial_run_dir. Also RDBStorage's heartbeat_stale_trial_callback."""
    retries = trial.user_attrs.get("retries", 0) + 1
    # a queued trial (a reference, a retry) killed before it drew its point has it in fixed_params
    params = trial.params or study.get_trials(deepcopy=False)[trial.number].system_attrs.get("fixed_params")
    if retries > MAX_RETRIES or not params:  # killed before it drew a point of its own: its slot goes to a new one
        return
    keep = {k: v for k, v in trial.user_attrs.items() if k == "reference"}  # not the dead worker's pid or host
    study.enqueue_trial(params, user_attrs={**keep, "retry_of": trial.user_attrs.get("retry_of", trial.number),
                                            "retries": retries})


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the running trials whose worker is gone, which would otherwise hold a slot of the
    budget forever, and queue each again (retry_trial): a dead process on this host (or one whose pid
    a later process got); (journal) a process of another host, the study's folder having been copied or
    moved here; (RDB) no heartbeat for 2 intervals; or no worker recorded at all 5 minutes
    after the start (killed between creating the trial and claim_slot)."""
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9; its optimize loop calls it too
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB storages with heartbeats; a no-op for journal files
    dead = []
    unclaimed_before = datetime.datetime.now() - datetime.timedelta(minutes=5)
    one_machine = _one_machine(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if _worker_gone(t.user_attrs, one_machine) or \
                (pid is None and t.datetime_start and t.datetime_start < unclaimed_before):
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # another worker failed it just now
                continue
            retry_trial(study, t)  # only the worker whose tell took queues the retry
            dead.append(t.number)
    return dead


def count_claimed(study: optuna.Study, before: int | None = None) -> int:
    """Trials that use up the budget: finished ones and those running in live workers."""
    trials = study.get_trials(deepcopy=False, states=FINISHED + (TrialState.RUNNING,))
    return sum(before is None or t.number < before for t in trials)


class SurplusTrial(Exception):
    """Two workers asked for the last slot at the same instant; the later trial stands down."""


def claim_slot(trial: optuna.Trial, n_trials: int) -> None:
    """Record who runs `trial`; raise SurplusTrial if earlier trials already fill the budget."""
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("process", process_start(os.getpid()))
    fail_dead_trials(trial.study)
    if count_claimed(trial.study, before=trial.number) >= n_trials:
        trial.set_user_attr("surplus", True)
        trial.study.stop()
        raise SurplusTrial(f"trial {trial.number}: the study already has {n_trials} trials")


def _stop_when_claimed(n_trials: int):
    def callback(study, trial):
        fail_dead_trials(study)
        if count_claimed(study) >= n_trials:
            study.stop()
    return callback


# ----------------------------------------------------------------------------- running and results

def run_study(data: str, out: str, budget: TuneConfig | None = None, base: TrainConfig | None = None,
              storage: str = "", worker: int = 0, threads: int | None = None,
              kept: Path | None = KEPT) -> optuna.Study:
    """Run trials until the study has budget.n_trials finished ones (all workers together) or budget.timeout
    seconds pass; then write best_params.json and trials.csv into `out`. Returns the study.

    base is the recipe searched around (with budget.base's changes: search_recipe), at its final budget (its
    own epochs, or budget.final_epochs, and its train_fraction); trials train budget.epochs_per_trial epochs
    on budget.train_fraction of Training.
    budget.workers > 1 starts workers - 1 more processes on the same study beside this one, each with one
    thread (benchmarks/tune_workers.py: faster than one process with every thread).
    kept: where `fer study --keep-trainings` keeps searches (keep_search); a search with no journal in `out`
    continues the kept one of the same settings and data, begun on another machine."""
    b = budget or TuneConfig()
    if not Path(data).is_file():
        raise FileNotFoundError(f"{data}: no such HDF5 file (make one with `fer preprocess`)")
    storage = storage or os.environ.get(STORAGE_ENV, "")  # keeps a password off the command line
    out = Path(out)
    recipe = dataclasses.replace(search_recipe(base or TrainConfig(), b), data=str(data), out=str(out), seed=b.seed,
                                 progress=False)
    if b.final_epochs:
        recipe = dataclasses.replace(recipe, epochs=b.final_epochs)
    epochs, min_epochs = b.epochs_per_trial, min(b.min_epochs, b.epochs_per_trial)
    trial_base = dataclasses.replace(recipe, epochs=epochs, train_fraction=b.train_fraction)
    points = reference_points(recipe)  # before anything is written: a recipe outside the space leaves nothing behind
    try:
        create_pruner(b.pruner, min_epochs, epochs, b.reduction_factor)
    except ValueError as e:
        raise UserError(str(e)) from None
    fixed = {k: v for k, v in dataclasses.asdict(recipe).items()
             if k not in ("data", "out", "epochs", "train_fraction", "seed")}
    search = {"data_sha256": read_info(data)["source_sha256"], "epochs_per_trial": epochs,
              "train_fraction": b.train_fraction, "seed": b.seed, "base_config": fixed,
              "final": {"epochs": recipe.epochs, "train_fraction": recipe.train_fraction}}
    out.mkdir(parents=True, exist_ok=True)
    if not storage and kept is not None and worker == 0:
        continue_kept_search(out / JOURNAL, Path(kept) / f"search-{search_key(search)}" / JOURNAL)
    study = create_study(storage or str(out / JOURNAL), b.study_name, b.seed, b.pruner, min_epochs,
                         epochs, worker, b.reduction_factor)
    for key, value in search.items():  # a resumed study must keep its trials comparable
        old = study.user_attrs.get(key, value)
        if old != value:
            raise ValueError(f"study {b.study_name!r} was run with {key}={old!r}, not {value!r}; "
                             "use another --study or --out")
        study.set_user_attr(key, value)

    dead = fail_dead_trials(study)
    if dead:
        print(f"trials {dead} were left running by a worker that died: marked FAIL and queued again, "
              "each to go on after its last finished epoch")
    if worker == 0:
        enqueue_references(study, points)
    helpers = _start_workers(b, recipe, out, storage) if worker == 0 and b.workers > 1 else []
    threads_before = torch.get_num_threads()
    if threads or helpers:
        torch.set_num_threads(1 if helpers else threads)  # several workers on one machine: share the cores

    judge = b.pruner if b.pruner in ("median", "none") else \
        f"{b.pruner} (min_epochs {min_epochs}, reduction_factor {b.reduction_factor})"

    def budgeted_objective(trial):
        claim_slot(trial, b.n_trials)
        # a study may change pruners when resumed: which one judged this trial
        trial.set_user_attr("pruner", judge)
        return objective(trial, trial_base)

    timeout = remaining_timeout(study, b.timeout, b.workers)
    if timeout is not None and timeout <= 0:
        print(f"the search has spent its timeout ({b.timeout:.0f} s over its sittings): no new trial")
    try:
        if count_claimed(study) < b.n_trials and (timeout is None or timeout > 0):
            study.optimize(budgeted_objective, n_trials=b.n_trials, timeout=timeout, catch=(SurplusTrial,),
                           callbacks=[_stop_when_claimed(b.n_trials)])
        for proc, log in helpers:
            if proc.wait() != 0:
                raise RuntimeError(f"search worker {proc.args[proc.args.index('--worker') + 1]} failed "
                                   f"(exit {proc.returncode}); its log: {log}")
    finally:
        for proc, _ in helpers:  # interrupted: the other workers stop too (their trials are marked FAIL on resume)
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        torch.set_num_threads(threads_before)  # a notebook's later cells (the finalists) get every core again
    write_results(study, out)
    return study


def search_key(search: dict) -> str:
    """16 hex digits of sha256 over what makes a search's trials comparable (run_study's `search` attributes)."""
    return hashlib.sha256(json.dumps(search, sort_keys=True, default=str).encode()).hexdigest()[:16]


def continue_kept_search(journal: Path, src: Path) -> None:
    """Copy a kept journal to `journal`, where none is yet: the search goes on from its trials."""
    if journal.exists() or not src.is_file():
        return
    write_atomic(journal, src.read_bytes())
    print(f"continuing the search kept in {src}, begun on another machine", flush=True)


def keep_search(journal, kept=KEPT, overwrite: bool = False) -> list[tuple[str, str]]:
    """Copy a search's journal file to KEPT/search-<search_key>/ for run_study on another machine. A kept
    copy grows with it (the search went on from it: it is the start of this journal); one that holds lines
    this journal lacks (another machine's trials) is replaced only with overwrite. Only whole lines are
    copied: a search may be writing it now. Returns [(folder name, what was kept)] for each study in it."""
    journal = Path(journal)
    text = journal.read_bytes()
    text = text[:text.rfind(b"\n") + 1]
    done = []
    for summary in optuna.get_all_study_summaries(open_storage(str(journal))):
        attrs = summary.user_attrs
        if not all(k in attrs for k in SEARCH_ATTRS):
            done.append((summary.study_name, "not a run_study search (no search attributes): left out"))
            continue
        name = f"search-{search_key({k: attrs[k] for k in SEARCH_ATTRS})}"
        dst = Path(kept) / name / JOURNAL
        old = dst.read_bytes() if dst.is_file() else b""
        if old == text:
            done.append((name, "already kept"))
            continue
        if not text.startswith(old) and not overwrite:
            raise UserError(f"{dst}: holds trials that {journal} lacks (the search went on elsewhere); "
                            "keep that one, or pass --overwrite to replace it")
        write_atomic(dst, text)
        done.append((name, f"kept {journal} ({summary.n_trials} trials)"))
    return done


def search_seconds(study: optuna.Study, workers: int = 1) -> float:
    """The search's time so far, every sitting together: its finished trials' durations over the workers that
    ran side by side (a killed trial's time is counted by its retry, which goes on from its epochs)."""
    done = [t.duration.total_seconds() for t in study.get_trials(deepcopy=False)
            if t.state in FINISHED and t.duration is not None]
    return sum(done) / max(1, workers)


def remaining_timeout(study: optuna.Study, timeout: float | None, workers: int = 1) -> float | None:
    """What is left of `timeout` for this sitting: a search stopped and resumed across sessions keeps one
    budget, not one per sitting."""
    return None if timeout is None else timeout - search_seconds(study, workers)


def _start_workers(budget: TuneConfig, recipe: TrainConfig, out: Path, storage: str) -> list:
    """`fer tune --worker i --threads 1` for i in 1..workers-1, on this study; [(process, log file)]. Each
    reads OUT/search_recipe.json, a profile of this recipe and budget whole: it searches as this worker does."""
    recipe_file = out / "search_recipe.json"
    write_atomic(recipe_file, json.dumps({
        "train": {k: v for k, v in dataclasses.asdict(recipe).items() if k not in ("data", "out")},
        "tune": {**dataclasses.asdict(budget), "workers": 1, "final_top": 0}}, indent=2))  # the finalists: worker 0
    # the storage URL goes by the environment, so that a password is not on any command line
    env = {**os.environ, STORAGE_ENV: storage or str(out / JOURNAL), "FER_PROGRESS": "0"}
    helpers = []
    for w in range(1, budget.workers):
        cmd = [sys.executable, "-m", "fer_lib.cli", "tune", "--data", recipe.data, "--out", str(out),
               "--config", str(recipe_file), "--worker", str(w), "--threads", "1"]
        log = out / f"worker_{w}.log"
        with open(log, "w") as fh:
            helpers.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env), log))
    return helpers


def reference_points(recipe: TrainConfig) -> dict:
    """{"default": the engine's untuned default, "recipe": the recipe searched around}, as points of the
    space; UserError when the recipe lies outside it."""
    # the untuned default keeps the recipe's architecture shape (widths), not its tuned dropouts
    shape = {k: v for k, v in recipe.model_args.items() if k not in SPACE}
    try:
        return {"default": default_params(TrainConfig(model_args=shape, epochs=recipe.epochs)),
                "recipe": default_params(recipe)}
    except ValueError as e:  # e.g. a recipe of a model or optimizer the space does not hold
        raise UserError(f"the recipe to search around lies outside the search space (fer_lib.tune.suggest_config): "
                        f"{e}") from None


def enqueue_references(study: optuna.Study, points: dict) -> list[str]:
    """Queue the reference_points, each unless a copy of it finished or is queued or running: one
    killed (and marked FAIL) is queued again, so the study always gets both. One trial serves both
    when they are the same point. Returns the references queued."""
    have = set(references(study, FINISHED + (TrialState.WAITING, TrialState.RUNNING)))
    missing = [ref for ref in REFERENCES if ref not in have]
    if missing == list(REFERENCES) and points["default"] == points["recipe"]:
        missing = ["+".join(REFERENCES)]
    for ref in missing:
        study.enqueue_trial(points[ref.split("+")[0]], user_attrs={"reference": ref})
    return missing


def trial_config(study: optuna.Study, trial, final: bool = False, **fields) -> TrainConfig:
    """The whole training config of a trial, from the storage alone: the study's fixed fields, the
    trial's parameters, and the trial's budget (or, final=True, the recipe's); fields on top."""
    a = study.user_attrs
    budget = a["final"] if final else {"epochs": a["epochs_per_trial"], "train_fraction": a["train_fraction"]}
    return TrainConfig(**{**a["base_config"], **trial.params, **budget, "seed": a["seed"], **fields})


def references(study: optuna.Study, states=FINISHED) -> dict:
    """{"default"|"recipe": the latest trial of that reference in these states}."""
    return {ref: t for t in study.get_trials(deepcopy=False, states=states)
            for ref in t.user_attrs.get("reference", "").split("+") if ref}


def finalists(study: optuna.Study, k: int) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    """What is retrained at the final budget: the references and the k best other complete trials."""
    refs = references(study)
    ranked = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if not t.user_attrs.get("reference")), key=lambda t: -t.value)
    roles = {}  # trial number -> its roles; one run for a trial that is both references
    for ref in REFERENCES:
        if ref in refs:
            roles.setdefault(refs[ref].number, (refs[ref], []))[1].append(ref)
    return [("+".join(r), t) for t, r in roles.values()] + [(f"search #{i + 1}", t) for i, t in enumerate(ranked[:k])]


def retrain_finalists(study: optuna.Study, data: str, out, k: int = 3, threads: int | None = None,
                      kept=(KEPT,)) -> dict:
    """Train each finalist at the recipe's epochs into OUT/final/<its training key> (chain.keyed_fit: resumed
    when killed, reused from `kept` on another machine), PublicTest only; then the rank correlation of proxy
    and final PublicTest scores, and the choice. Writes OUT/final.json and points OUT/best_params.json at the
    chosen finalist."""
    if threads:
        torch.set_num_threads(threads)
    out, rows, todo = Path(out), [], finalists(study, k)
    for i, (role, t) in enumerate(todo, 1):
        # progress: the run prints its plan (epochs, measured speed, time); bars only where FER_PROGRESS allows
        cfg = trial_config(study, t, final=True, progress=True)
        print(f"finalist {i}/{len(todo)}: trial {t.number} ({role}) at {cfg.epochs} epochs", flush=True)
        result = keyed_fit(cfg, data, out / "final", kept)
        rows.append({"role": role, "trial": t.number, "proxy_val_acc": t.value,
                     "final_val_acc": result["best"]["val_acc"], "final_epoch": result["best"]["epoch"],
                     "run": result["out"], "train_config": _recipe_fields(cfg)})
    rho = rank_correlation([r["proxy_val_acc"] for r in rows], [r["final_val_acc"] for r in rows])
    searched = [r for r in rows if r["role"].startswith("search")]
    result = {"finalists": rows, "spearman_proxy_final": rho, "final_budget": study.user_attrs["final"],
              "chosen": max(rows, key=lambda r: r["final_val_acc"])["trial"] if rows else None,
              "search_best": max(searched, key=lambda r: r["final_val_acc"])["trial"] if searched else None}
    write_atomic(out / "final.json", json.dumps(result, indent=2))
    write_results(study, out, final=result)
    return result


FINAL_TABLE = (("untuned default", "default"), ("hand recipe", "recipe"), ("search best", None))


def final_table(final: dict) -> list[dict]:
    """The tuned-against-untuned rows of final.json, chosen on PublicTest: the untuned default, the hand
    recipe and the search's best finalist, each with its checkpoint. Notebook 04 scores them on PrivateTest."""
    rows = []
    for label, ref in FINAL_TABLE:
        row = next((r for r in final["finalists"] if (ref in r["role"].split("+") if ref
                    else r["trial"] == final.get("search_best"))), None)
        if row is not None:
            rows.append({"label": label, "trial": row["trial"], "role": row["role"],
                         "val_accuracy": row["final_val_acc"], "checkpoint": str(Path(row["run"]) / "best.pt")})
    return rows


def _recipe_fields(cfg: TrainConfig) -> dict:
    """A config without where it ran: what `fer train --config` should read."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data", "out", "progress")}


def write_results(study: optuna.Study, out, final: dict | None = None) -> Path | None:
    """OUT/trials.csv, and OUT/best_params.json that `fer train --config` reads as it is: the whole
    recipe at the final budget of the best trial (by its proxy score), or, once the finalists are
    retrained (`final`), of the finalist with the best PublicTest accuracy at the final budget."""
    out = Path(out)
    write_atomic(out / "trials.csv", study.trials_dataframe().to_csv(index=False))
    summary = summarize_study(study)
    if "best_params" not in summary:
        return None
    best = study.best_trial
    chosen_by = "the best proxy score (best_value: the best PublicTest accuracy within the trial)"
    if final and final.get("chosen") is not None:
        best = study.trials[final["chosen"]]
        chosen_by = "the best PublicTest accuracy of the finalists retrained at the final budget (final.json)"
    payload = {"train_config": _recipe_fields(trial_config(study, best, final=True)), "trial": best.number,
               "chosen_by": chosen_by, "metric": "best_value: the best PublicTest accuracy within the trial",
               **summary}
    write_atomic(out / "best_params.json", json.dumps(payload, indent=2))
    return out / "best_params.json"


def summarize_study(study: optuna.Study) -> dict:
    """Counts per state, the best trial and the reference trials, as plain data for reports."""
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    summary = {"study": study.study_name, "n_trials": states.count("COMPLETE") + states.count("PRUNED"),
               "n_complete": states.count("COMPLETE"), "n_pruned": states.count("PRUNED"),
               "n_failed": states.count("FAIL"), "search": study.user_attrs}
    if summary["n_complete"]:
        summary.update(best_value=study.best_value, best_trial=study.best_trial.number, best_params=study.best_params)
    for ref, t in references(study).items():  # pruned (an older study): its last reported accuracy
        value = t.value if t.value is not None else max(t.intermediate_values.values(), default=None)
        summary[f"{ref}_trial"] = {"number": t.number, "state": t.state.name, "params": t.params, "value": value}
    return summary


def rank_correlation(a: list, b: list) -> float | None:
    """Spearman's rho of a and b; None where it is undefined (under 3 pairs, or either side constant)."""
    ranked = len(a) > 2 and min(len(set(a)), len(set(b))) > 1
    return float(spearmanr(a, b).statistic) if ranked else None


def rung_agreement(study: optuna.Study) -> pd.DataFrame:
    """How well each epoch ranks recipes: over the trials that trained the whole trial budget, the rank
    correlation (Spearman) of their PublicTest accuracy at that epoch with their best. A rung at an epoch
    where it is low prunes recipes that would have won (the choice of min_epochs and reduction_factor)."""
    budget = study.user_attrs["epochs_per_trial"]
    full = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if budget in t.intermediate_values]
    best = [max(t.intermediate_values.values()) for t in full]
    rows = []
    for epoch in range(1, budget + 1):
        rho = rank_correlation([t.intermediate_values.get(epoch, np.nan) for t in full], best)
        rows.append({"epoch": epoch, "trials": len(full), "spearman_with_best": np.nan if rho is None else rho})
    return pd.DataFrame(rows).set_index("epoch")


def expected_epochs(pruner: str, epochs: int, min_epochs: int, reduction_factor: int, after: int = 0) -> float:
    """The epochs a trial that has trained `after` still trains, on average: with halving, each rung passes
    1/reduction_factor of the trials; with any other pruner, the whole budget (at most)."""
    if pruner != "halving":
        return float(max(epochs - after, 0))
    rungs = HalvingPruner(min_epochs, epochs, reduction_factor).rungs(epochs)
    total, share, lo = 0.0, 1.0, 0
    for end in [*rungs, epochs]:  # epochs lo+1..end: trained by the share that passed the rungs after `after`
        if end > after:
            total += share * (end - max(lo, after))
            share /= reduction_factor if end in rungs else 1
        lo = end
    return total


def trial_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, role, the trial it retries, epochs reported, best and last PublicTest
    accuracy, minutes, the pruner that judged it, its parameters and where it ran. A trial left RUNNING by a
    worker that is gone (_worker_gone) is STOPPED (the next `fer tune` fails it and queues it again)."""
    rows, one_machine = [], _one_machine(study)
    for t in study.get_trials(deepcopy=False):
        a, iv = t.user_attrs, t.intermediate_values
        stopped = t.state == TrialState.RUNNING and _worker_gone(a, one_machine)
        rows.append({"trial": t.number, "state": "STOPPED" if stopped else t.state.name,
                     "role": a.get("reference", ""), "retry of": a.get("retry_of", ""), "epochs": max(iv, default=0),
                     "best": max(iv.values(), default=np.nan), "last": iv[max(iv)] if iv else np.nan,
                     "minutes": round(t.duration.total_seconds() / 60) if t.duration else np.nan,
                     "pruner": a.get("pruner", ""), **t.params, "ran on": describe_machine(a.get("machine"))})
    return pd.DataFrame(rows).set_index("trial")


def study_progress(study: optuna.Study, cfg: TuneConfig, out) -> dict:
    """How far a study is and what is left, as plain data (`fer tune --status`): trials finished, running
    and to come; the epochs left, expected under cfg's pruner, of the search and of the finalists in
    OUT/final; and the seconds an epoch took on this CPU (the median over its finished trials)."""
    budget, final_epochs = study.user_attrs["epochs_per_trial"], study.user_attrs["final"]["epochs"]
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    running = [t for t in trials if t.state == TrialState.RUNNING]

    def left(after=0, reference=False):
        return expected_epochs("none" if reference else cfg.pruner, budget, cfg.min_epochs, cfg.reduction_factor,
                               after)
    search = sum(left(t.last_step or 0, "reference" in t.user_attrs) for t in running) + \
        max(cfg.n_trials - len(finished) - len(running), 0) * left()
    done = {p.parent.name: len(json.loads(p.read_text())) for p in Path(out).glob("final/*/history.json")}
    finalists = (len(set(t.number for t in references(study, states=None).values())) + cfg.final_top) * final_epochs
    cpu = describe_environment()["cpu"]
    trained = {t.number: (t.last_step or 0) - judged_epochs(t, study) for t in finished}  # a retry: its own epochs
    rates = [t.duration.total_seconds() / trained[t.number] for t in finished
             if t.user_attrs.get("machine", {}).get("cpu") == cpu and t.duration and trained[t.number] > 0]
    return {"n_trials": cfg.n_trials, "finished": len(finished), "running": len(running),
            "failed": sum(t.state == TrialState.FAIL for t in trials), "search_epochs_left": search,
            "final_epochs_left": max(finalists - sum(done.values()), 0), "final_epochs_done": done,
            "cpu": cpu, "seconds_per_epoch": float(np.median(rates)) if rates else None, "rate_trials": len(rates),
            "workers": cfg.workers}


def print_status(study: optuna.Study, cfg: TuneConfig, out) -> None:
    """The trial table and what is left, for a study that may be running now (reads only)."""
    table = trial_table(study)
    shown = [c for c in ("state", "role", "retry of", "epochs", "best", "minutes", "model", "width_mult",
                         "batch_size", "optimizer", "lr", "scheduler") if c in table]
    with pd.option_context("display.width", 200, "display.max_rows", None, "display.float_format", "{:.4g}".format):
        print(table[shown].to_string() if len(table) else "no trials yet")
    p = study_progress(study, cfg, out)
    print(f"{p['finished']} of {p['n_trials']} trials finished, {p['running']} running, {p['failed']} failed "
          f"(a killed trial is failed and goes on in a retry)")
    now = finalists(study, cfg.final_top)
    if now:
        print(f"the finalists, were the search to end now (best PublicTest within {study.user_attrs['epochs_per_trial']}"
              " epochs): " + ", ".join(f"{role} trial {t.number} " + ("n/a" if t.value is None else f"{t.value:.4f}")
                                        for role, t in now))
    left = f"about {p['search_epochs_left']:.0f} epochs of search ({cfg.pruner}), then " \
        f"{p['final_epochs_left']} of the finalists"
    if p["seconds_per_epoch"] is None:
        print(f"left: {left}; no trial finished on this CPU ({p['cpu']}) yet to time an epoch")
    else:
        hours = (p["search_epochs_left"] + p["final_epochs_left"]) * p["seconds_per_epoch"] / max(p["workers"], 1) / 3600
        print(f"left: {left}: about {hours:.1f} h at {p['seconds_per_epoch']:.0f} s an epoch per worker (the median "
              f"of {p['rate_trials']} finished trials on this CPU) with {p['workers']} worker(s)")


def original_best_params() -> dict:
    """What the original study's repo trained with by default: Adam, lr 1e-3, batch 64, StepLR, on
    its baseline CNN (dropout 0.5). Not a tuning result: its tuned values were picked on the test
    set and the issue does not list them."""
    return {"model": "baseline", "optimizer": "adam", "lr": 1e-3, "batch_size": 64, "scheduler": "step",
            "drop_rate": 0.5}


def compare_with_original(params: dict) -> pd.DataFrame:
    """One row per hyper-parameter: the original repo's default beside `params` (e.g. best trial)."""
    orig = original_best_params()
    keys = list(dict.fromkeys([*params, *orig]))
    return pd.DataFrame({"original repo (defaults)": [orig.get(k) for k in keys],
                         "this search (best trial)": [params.get(k) for k in keys]}, index=keys)


# ----------------------------------------------------------------------------- CLI

def add_arguments(p) -> None:
    p.add_argument("--data", default="data/fer2013.h5", help="HDF5 written by `fer preprocess`")
    p.add_argument("--out", default="runs/tune", help="run folder: journal, best_params.json, trials.csv")
    p.add_argument("--storage", default="", help="Optuna storage URL or journal file (default $FER_OPTUNA_STORAGE, "
                   "else OUT/optuna.journal); leave the password out and use PGPASSWORD or ~/.pgpass")
    p.add_argument("--config", help="a profile (configs/profiles/smoke.yaml): its `tune` section is the budget, "
                   "its `train` section the recipe searched around; or a file of TrainConfig fields")
    add_dataclass_arguments(p, TuneConfig, flags={"study_name": "--study", "epochs_per_trial": "--epochs"})
    p.add_argument("--worker", type=int, default=0, help="distinct index per parallel worker (sampler seed)")
    p.add_argument("--threads", type=int, help="torch threads per worker (e.g. cores / workers)")
    p.add_argument("--export-trial", type=int, metavar="N", help="write trial N's whole training config, from the "
                   "storage, to OUT/trial_N.json (at the trial's budget; --final-budget: at the final one) and stop")
    p.add_argument("--final-budget", action="store_true", help="with --export-trial: at the final budget")
    p.add_argument("--overwrite", action="store_true", help="with --export-trial: replace OUT/trial_N.json")
    p.add_argument("--status", action="store_true", help="print the study's trials and what is left (epochs, and "
                   "hours at this CPU's measured speed), even while it runs; writes nothing. Give the run's --config")


def load_existing(storage: str, out, study_name: str) -> optuna.Study:
    """A study that `fer tune` made (--storage, $FER_OPTUNA_STORAGE or OUT/optuna.journal), without creating
    one; UserError when there is none."""
    storage = storage or os.environ.get(STORAGE_ENV, "") or str(Path(out) / JOURNAL)
    if "://" not in storage and not Path(storage).is_file():
        raise UserError(f"{storage}: no study here (run fer tune first)")
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise UserError(f"{describe_storage(storage, out)} holds no study {study_name!r}") from None


def export_trial(study: optuna.Study, number: int, out, final: bool = False, overwrite: bool = False) -> Path:
    """OUT/trial_<n>.json: what `fer train --config` needs to train trial n again (data and out aside); an
    existing one is replaced only with overwrite."""
    if not 0 <= number < len(study.trials) or not study.trials[number].params:
        raise UserError(f"--export-trial {number}: study {study.study_name!r} has no such trial with parameters "
                        f"(trials 0..{len(study.trials) - 1})")
    path = Path(out) / f"trial_{number}.json"
    check_output_path(path, "--export-trial", overwrite=overwrite)
    cfg = trial_config(study, study.trials[number], final=final)
    return write_atomic(path, json.dumps({"train_config": _recipe_fields(cfg)}, indent=2))


def run(args) -> int:
    cfg = dataclass_from_arguments(args, TuneConfig, read_config(args.config).get("tune", {}) if args.config else {})
    if args.threads is not None and args.threads < 1 or args.worker < 0:
        raise UserError(f"--threads {args.threads} / --worker {args.worker}: threads at least 1, worker at least 0")
    if args.status:
        print_status(load_existing(args.storage, args.out, cfg.study_name), cfg, args.out)
        return 0
    if args.export_trial is not None:
        study = load_existing(args.storage, args.out, cfg.study_name)
        path = export_trial(study, args.export_trial, args.out, args.final_budget, args.overwrite)
        print(f"wrote {path}; train it: fer train --data {args.data} --config {path}")
        return 0
    study = run_study(args.data, args.out, cfg, resolve_config(args.config), args.storage, args.worker, args.threads)
    summary = summarize_study(study)
    print(f"study {summary['study']!r}: {summary['n_trials']} finished trials ({summary['n_pruned']} pruned)")
    if "best_value" not in summary:
        return 0
    print(f"best PublicTest acc {summary['best_value']:.4f} (trial {summary['best_trial']}) in "
          f"{summary['search']['epochs_per_trial']} epochs")
    if cfg.final_top > 0 and args.worker == 0:
        final = retrain_finalists(study, args.data, args.out, cfg.final_top, args.threads)
        for r in final["finalists"]:
            print(f"trial {r['trial']:3d} ({r['role']}): PublicTest {r['proxy_val_acc']:.4f} in the search, "
                  f"{r['final_val_acc']:.4f} at {final['final_budget']['epochs']} epochs")
        rho = final["spearman_proxy_final"]
        print(f"rank correlation of search and final scores: {'n/a' if rho is None else f'{rho:+.2f}'}; "
              f"chosen on PublicTest: trial {final['chosen']}")
    print(f"retrain: fer train --data {args.data} --config {Path(args.out) / 'best_params.json'}")
    return 0
