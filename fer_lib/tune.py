"""Optuna search over the training recipe, scored on PublicTest only.

    fer tune --data data/fer2013.h5 --out runs/tune                       # journal file runs/tune/optuna.journal
    fer tune --data data/fer2013.h5 --out runs/tune --worker 1 --threads 1   # a 2nd process on the same study
    fer tune --storage postgresql://user:pw@host/db --study fer --worker 3   # on each of many machines
    fer train --data data/fer2013.h5 --config runs/tune/best_params.json     # retrain the best trial

Each trial trains with fer_lib.train's engine for a few epochs on a subset of
Training, reports PublicTest accuracy every epoch so the pruner can stop bad
trials, and returns its best PublicTest accuracy. PrivateTest is never read.
`--n-trials` is the study's total of finished (complete or pruned) trials,
shared by all workers; rerunning the same command resumes an interrupted study.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import logging
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import optuna
import pandas as pd
import torch
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from . import train
from .data import read_info
from .flags import add_dataclass_arguments, dataclass_from_arguments
from .io import mask_url, read_config, write_atomic
from .models import create_model
from .progress import in_notebook
from .train import TrainConfig, resolve_config

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what n_trials counts


@dataclasses.dataclass
class TuneConfig:
    """The search's budget and machinery; the recipe it searches around is a TrainConfig (the profile's
    `train` section)."""
    n_trials: int = 30                # finished (complete or pruned) trials in the study, all workers together
    timeout: float | None = 2400      # seconds after which a worker starts no new trial (None: no limit)
    epochs_per_trial: int = 4         # epochs each trial trains
    train_fraction: float = 0.25      # stratified share of Training each trial trains on
    pruner: str = "median"            # median | hyperband | none
    study_name: str = "fer"           # workers (and reruns) with the same storage and name share the study
    seed: int = 0                     # seeds the TPE sampler and every trial's training
HEARTBEAT_S = 60  # RDB storages: a trial silent for 2 heartbeats is failed (a worker died on another machine)


def suggest_config(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """The search space. Every parameter name is a TrainConfig field, so trial.params is a config."""
    optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd", "rmsprop"])
    # The original study's lr range suits Adam/RMSprop; SGD needs larger steps (our default is 0.05).
    trial.suggest_float("lr", 1e-5, 1e-1 if optimizer == "sgd" else 1e-2, log=True)
    trial.suggest_categorical("batch_size", [16, 32, 64, 128])
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    scheduler = trial.suggest_categorical("scheduler", ["step", "onecycle", "cosine"])
    if scheduler == "step":
        trial.suggest_int("step_size", 1, max(1, base.epochs))  # in epochs of this trial's budget
        trial.suggest_float("gamma", 0.1, 0.9)
    trial.suggest_categorical("model", ["vgg_small", "baseline", "improved"])
    trial.suggest_categorical("activation", ["relu", "leaky_relu", "elu"])
    trial.suggest_float("drop_rate", 0.0, 0.6)
    trial.suggest_float("label_smoothing", 0.0, 0.2)
    trial.suggest_float("augment", 0.0, 1.5)  # strength of shift/rotation/scale/erasing
    return dataclasses.replace(base, **trial.params)


def default_params(base: TrainConfig) -> dict:
    """`base` as a point of the search space: enqueued as the study's first trial, it measures the
    untuned recipe at the trials' budget, so the report shows what tuning gained."""
    drop = base.drop_rate
    if drop is None:  # the model's own head dropout
        drop = next(m.p for m in create_model(base.model, **base.model_args).modules()
                    if isinstance(m, torch.nn.Dropout))
    params = {k: getattr(base, k) for k in ("optimizer", "lr", "batch_size", "weight_decay", "scheduler",
                                            "model", "activation", "label_smoothing", "augment")}
    params["drop_rate"] = float(drop)
    if base.scheduler == "step":
        params.update(step_size=base.step_size, gamma=base.gamma)
    suggest_config(optuna.trial.FixedTrial(params), base)  # raises if the space asks for another name
    return params


def objective(trial: optuna.Trial, base: TrainConfig) -> float:
    """Train one suggested config; the best PublicTest accuracy over its epochs."""
    cfg = suggest_config(trial, base)
    s = train.setup(cfg)  # loads Training and PublicTest only
    best = 0.0
    for epoch in range(1, cfg.epochs + 1):
        val_acc = train.run_epoch(s, epoch)["val_acc"]
        best = max(best, val_acc)
        trial.report(val_acc, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return best


# ----------------------------------------------------------------------------- storage and study

STORAGE_ENV = "FER_OPTUNA_STORAGE"  # a storage URL from the environment, when --storage is not given


def describe_storage(storage: str, out) -> str:
    """What a study is stored in, fit to print: the URL with its password masked, or the journal file."""
    storage = storage or os.environ.get(STORAGE_ENV, "")
    return mask_url(storage) if storage else str(Path(out).resolve() / "optuna.journal")


def open_storage(storage: str):
    """A URL (sqlite:///x.db, postgresql://...) opens an RDB storage; anything else is a journal file."""
    if "://" in storage:
        import sqlalchemy
        if storage.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
            # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; our [postgres] extra installs psycopg2.
            storage = "postgresql+psycopg2://" + storage.removeprefix("postgresql://")
        for attempt in range(4):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_S)
            except sqlalchemy.exc.DBAPIError:  # workers starting together race to create the tables
                if attempt == 3:
                    raise
                time.sleep(1 + attempt)
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))  # file locks: many processes, one machine


def create_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":  # below the median of earlier trials at the same epoch; epoch 1 is too noisy
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose median, hyperband or none")


def log_trials_to_stdout() -> None:
    """Optuna's trial log on stdout, without colour codes: in a notebook, stderr is drawn as an error."""
    logger = optuna.logging.get_logger("optuna")
    if not any(isinstance(h, logging.StreamHandler) and h.stream is sys.stdout for h in logger.handlers):
        optuna.logging.disable_default_handler()
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[%(levelname).1s %(asctime)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)


def create_study(storage, study_name: str = "fer", seed: int = 0, pruner: str = "median") -> optuna.Study:
    """Create or resume (load_if_exists) a maximizing study with a seeded TPE sampler."""
    if in_notebook():
        log_trials_to_stdout()
    # constant_liar: parallel workers don't all sample next to the same running trial.
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    return optuna.create_study(storage=open_storage(storage) if isinstance(storage, str) else storage,
                               study_name=study_name, direction="maximize", sampler=sampler,
                               pruner=create_pruner(pruner), load_if_exists=True)


# ----------------------------------------------------------------------------- a budget shared by workers

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the running trials whose worker is gone, which would otherwise hold a slot of the
    budget forever: a dead process on this host; (RDB) no heartbeat for 2 intervals; or no worker
    recorded at all 5 minutes after the start (killed between creating the trial and claim_slot)."""
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9; its optimize loop calls it too
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB storages with heartbeats; a no-op for journal files
    host, dead = socket.gethostname(), []
    unclaimed_before = datetime.datetime.now() - datetime.timedelta(minutes=5)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if (t.user_attrs.get("host") == host and pid and not _pid_alive(pid)) or \
                (pid is None and t.datetime_start and t.datetime_start < unclaimed_before):
            try:
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                dead.append(t.number)
            except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it just now
                pass
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

def run_study(data: str, out: str, storage: str = "", study_name: str = "fer", n_trials: int = 30,
              timeout: float | None = None, epochs: int = 4, train_fraction: float = 0.25, seed: int = 0,
              pruner: str = "median", worker: int = 0, threads: int | None = None,
              base: TrainConfig | None = None) -> optuna.Study:
    """Run trials until the study has n_trials finished ones (all workers together) or `timeout`
    seconds pass; then write best_params.json and trials.csv into `out`. Returns the study."""
    if not Path(data).is_file():
        raise FileNotFoundError(f"{data}: no such HDF5 file (make one with `fer preprocess`)")
    if threads:
        torch.set_num_threads(threads)  # several workers on one machine: share the cores
    storage = storage or os.environ.get(STORAGE_ENV, "")  # keeps a password off the command line
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = dataclasses.replace(base or TrainConfig(), data=str(data), out=str(out), epochs=epochs,
                               train_fraction=train_fraction, seed=seed, progress=False)
    # Each worker samples with its own seed, else parallel workers propose the same first trials.
    study = create_study(storage or str(out / "optuna.journal"), study_name, seed + worker, pruner)
    fixed = {k: v for k, v in dataclasses.asdict(base).items()
             if k not in ("data", "out", "epochs", "train_fraction", "seed")}
    search = {"data_sha256": read_info(data)["source_sha256"], "epochs_per_trial": epochs,
              "train_fraction": train_fraction, "seed": seed, "base_config": fixed}
    for key, value in search.items():  # a resumed study must keep its trials comparable
        old = study.user_attrs.get(key, value)
        if old != value:
            raise ValueError(f"study {study_name!r} was run with {key}={old!r}, not {value!r}; "
                             "use another --study or --out")
        study.set_user_attr(key, value)

    dead = fail_dead_trials(study)
    if dead:
        print(f"trials {dead} were left running by a worker that died; marked FAIL")
    if worker == 0:
        enqueue_default(study, base)

    def budgeted_objective(trial):
        claim_slot(trial, n_trials)
        return objective(trial, base)

    if count_claimed(study) < n_trials:
        study.optimize(budgeted_objective, n_trials=n_trials, timeout=timeout, catch=(SurplusTrial,),
                       callbacks=[_stop_when_claimed(n_trials)])
    write_results(study, out)
    return study


def enqueue_default(study: optuna.Study, base: TrainConfig) -> bool:
    """Queue the untuned default recipe unless a copy of it finished or is queued or running: a
    default trial killed (and marked FAIL) is queued again, so the study always gets one."""
    alive = FINISHED + (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    if any(t.user_attrs.get("default_config") and t.state in alive for t in study.get_trials(deepcopy=False)):
        return False
    study.enqueue_trial(default_params(base), user_attrs={"default_config": True})
    return True


def write_results(study: optuna.Study, out) -> Path | None:
    """OUT/trials.csv, and OUT/best_params.json that `fer train --config` reads as it is."""
    out = Path(out)
    write_atomic(out / "trials.csv", study.trials_dataframe().to_csv(index=False))
    summary = summarize_study(study)
    if "best_params" not in summary:
        return None
    payload = {"train_config": summary.pop("best_params"),  # TrainConfig fields; add --epochs etc. when retraining
               "metric": "best_value: the best PublicTest accuracy within the trial", **summary}
    write_atomic(out / "best_params.json", json.dumps(payload, indent=2))
    return out / "best_params.json"


def summarize_study(study: optuna.Study) -> dict:
    """Counts per state and the best trial, as plain data for reports."""
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    summary = {"study": study.study_name, "n_trials": states.count("COMPLETE") + states.count("PRUNED"),
               "n_complete": states.count("COMPLETE"), "n_pruned": states.count("PRUNED"),
               "n_failed": states.count("FAIL"), "search": study.user_attrs}
    if summary["n_complete"]:
        summary.update(best_value=study.best_value, best_trial=study.best_trial.number, best_params=study.best_params)
    default = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("default_config") and t.state in FINISHED]
    if default:  # pruned: its last reported accuracy
        t = default[0]
        value = t.value if t.value is not None else max(t.intermediate_values.values(), default=None)
        summary["default_trial"] = {"number": t.number, "state": t.state.name, "params": t.params, "value": value}
    return summary


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


def run(args) -> int:
    cfg = dataclass_from_arguments(args, TuneConfig, read_config(args.config).get("tune", {}) if args.config else {})
    study = run_study(args.data, args.out, args.storage, cfg.study_name, cfg.n_trials, cfg.timeout,
                      cfg.epochs_per_trial, cfg.train_fraction, cfg.seed, cfg.pruner,
                      args.worker, args.threads, resolve_config(args.config))
    summary = summarize_study(study)
    print(f"study {summary['study']!r}: {summary['n_trials']} finished trials ({summary['n_pruned']} pruned)")
    if "best_value" in summary:
        print(f"best PublicTest acc {summary['best_value']:.4f} (trial {summary['best_trial']}); "
              f"retrain: fer train --data {args.data} --config {Path(args.out) / 'best_params.json'}")
    return 0
