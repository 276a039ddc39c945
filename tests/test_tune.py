"""fer_lib.tune: the space, a budget shared by workers, resume after a kill, pruning, no test leakage."""
import dataclasses
import datetime
import importlib.util
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState
from scipy.stats import spearmanr

import fer_lib.train
from fer_lib.environment import describe_machine
from fer_lib.errors import UserError
from fer_lib import chain, tune
from fer_lib.models import create_model
from fer_lib.train import TrainConfig, build_optimizer, build_scheduler, model_kwargs, resolve_config

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TINY = {"model_args": {"widths": [8, 16]}}  # every model in the space, 2 stages: ~0.1 s a step


def fer_tune(h5, out, *args, epochs=1) -> list[str]:
    """A `fer tune` worker on tiny models: about a second per trial on the synthetic data."""
    base = Path(out) / "base.json"
    base.write_text(json.dumps(TINY))
    return [sys.executable, "-m", "fer_lib.cli", "tune", "--data", str(h5), "--out", str(out), "--config", str(base),
            "--epochs", str(epochs), "--train-fraction", "0.3", "--threads", "1", "--timeout", "300",
            "--final-top", "0", *args]  # the finalists: test_finalists_are_retrained_at_the_recipes_budget


def search(**fields) -> tune.TuneConfig:
    """A small budget: 1-epoch trials on 30% of Training, no pruning, no timeout, unless told."""
    return tune.TuneConfig(**{"epochs_per_trial": 1, "train_fraction": 0.3, "pruner": "none", "timeout": None,
                              **fields})


def load(storage, name="fer") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=tune.open_storage(storage))


def test_space_yields_valid_configs():
    base = TrainConfig(epochs=4, **TINY)

    def build(trial):  # every suggestion must build a model, optimizer and scheduler
        cfg = tune.suggest_config(trial, base)
        assert cfg == resolve_config(**{**dataclasses.asdict(base), **trial.params})  # params are config fields
        model = create_model(cfg.model, **model_kwargs(cfg))
        assert model(torch.zeros(2, 1, cfg.crop or 48, cfg.crop or 48)).shape == (2, 7)
        build_scheduler(cfg, build_optimizer(cfg, model.parameters()), steps_per_epoch=10)
        return -abs(np.log10(cfg.lr) + 3)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, multivariate=True))
    study.optimize(build, n_trials=40)  # 10 random, then 30 TPE trials over the conditional lr range
    df = study.trials_dataframe()
    assert (df.state == "COMPLETE").all()
    assert set(df.params_optimizer) == {"adam", "sgd", "rmsprop"}
    assert set(df.params_scheduler) == {"step", "onecycle", "cosine"}
    assert set(df.params_model) <= {"vgg_small", "baseline", "improved", "resnet_small"}
    assert set(df.params_batch_size) <= {32, 64, 128, 256}
    assert set(df.params_width_mult) <= {0.75, 1.0, 1.25, 1.5} and set(df.params_crop) <= {0, 44}
    assert set(df.params_ema_decay) <= {0.0, 0.99, 0.998, 0.999}
    assert df.params_lr.between(1e-5, 1e-1).all()
    assert df.params_weight_decay.between(1e-6, 1e-2).all()
    step = df.params_scheduler == "step"
    # StepLR as a share of the run, not in epochs: the same schedule at the trial's and the final budget
    assert df.params_step_fraction[step].between(0.1, 0.5).all() and df.params_gamma[step].between(0.1, 0.9).all()
    assert df.params_step_fraction[~step].isna().all() and "params_step_size" not in df
    assert set(tune.SPACE) <= {c.removeprefix("params_") for c in df.columns}


def test_the_sampler_models_every_parameter_jointly(tmp_path):
    """Multivariate TPE models together the parameters it infers as its relative search space, and draws any
    other alone: lr must be among them with the optimizer (one range for all optimizers: a range that depends
    on the optimizer leaves the intersection search space), StepLR's own two too (group: a group of theirs)."""
    study = tune.create_study(str(tmp_path / "optuna.journal"))
    base = TrainConfig(epochs=4, **TINY)

    def score(trial):  # no training: a value that depends on the optimizer's lr, as accuracy does
        cfg = tune.suggest_config(trial, base)
        best = {"sgd": -1.3, "adam": -3, "rmsprop": -3.5}[cfg.optimizer]
        return -abs(np.log10(cfg.lr) - best) - (cfg.scheduler == "step") * abs(cfg.gamma - 0.5)

    study.optimize(score, n_trials=12)
    assert any(t.params["scheduler"] == "step" for t in study.trials)
    joint = study.sampler.infer_relative_search_space(study, study.trials[-1])
    assert set(tune.SPACE) | {"step_fraction", "gamma"} <= set(joint)


def check_shared_budget(study: optuna.Study, n: int, pids: set) -> None:
    """Exactly n finished trials, numbered without gaps, none run twice, each by one of the workers
    (which worker ran how many is the scheduler's business: one may take them all on a loaded machine);
    any extra trial is a marked surplus."""
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == n
    assert {t.user_attrs["pid"] for t in finished} <= pids
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == n  # no recipe run twice
    assert all(t.user_attrs.get("surplus") for t in study.get_trials(states=(TrialState.FAIL,)))
    assert not study.get_trials(states=(TrialState.RUNNING,))


def run_two_workers(h5, out, storage, study_name, n=6) -> optuna.Study:
    procs = [subprocess.Popen(fer_tune(h5, out, "--storage", storage, "--study", study_name, "--n-trials", str(n),
                                       "--worker", str(w)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for w in (0, 1)]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    study = load(storage, study_name)
    check_shared_budget(study, n, {p.pid for p in procs})
    return study


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_finish_a_fixed_number_of_trials(synthetic_h5, tmp_path, kind):
    storage = str(tmp_path / "optuna.journal") if kind == "journal" else f"sqlite:///{tmp_path}/optuna.db"
    study = run_two_workers(synthetic_h5, tmp_path, storage, "fer")
    best = json.loads((tmp_path / "best_params.json").read_text())
    assert best["best_trial"] == study.best_trial.number and best["best_value"] == study.best_value
    assert best["n_trials"] == 6
    cfg = resolve_config(str(tmp_path / "best_params.json"))  # `fer train --config` takes it as it is
    assert {k: getattr(cfg, k) for k in study.best_params} == study.best_params
    assert len(pd.read_csv(tmp_path / "trials.csv")) == len(study.trials)


@pytest.mark.postgres
def test_two_workers_on_postgres(synthetic_h5, tmp_path):
    url = os.environ.get("FER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server (set FER_TEST_POSTGRES_URL, e.g. via .ci/postgres.sh)")
    name = f"test-{uuid.uuid4().hex[:8]}"
    run_two_workers(synthetic_h5, tmp_path, url, name)
    optuna.delete_study(study_name=name, storage=tune.open_storage(url))


def test_killed_study_resumes(synthetic_h5, tmp_path):
    cmd = fer_tune(synthetic_h5, tmp_path, "--n-trials", "5", epochs=2)
    storage = str(tmp_path / "optuna.journal")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:  # kill mid-trial, after a trial completed
        try:
            study = load(storage)
        except KeyError:  # the worker has not created the study yet
            study = None
        if study and study.get_trials(states=(TrialState.COMPLETE,)) and \
                any("pid" in t.user_attrs for t in study.get_trials(states=(TrialState.RUNNING,))):
            break
        time.sleep(0.1)
    p.kill()
    p.wait()
    before = load(storage)
    done = {t.number: (t.params, t.value) for t in before.get_trials(states=(TrialState.COMPLETE,))}
    left_running = [t.number for t in before.get_trials(states=(TrialState.RUNNING,))]
    assert done and len(before.get_trials(states=FINISHED)) < 5, "the kill came after the study ended"

    subprocess.run(cmd, check=True, timeout=400, capture_output=True)
    after = load(storage)
    assert len(after.get_trials(states=FINISHED)) == 5
    assert {n: (after.trials[n].params, after.trials[n].value) for n in done} == done  # nothing lost
    assert all(after.trials[n].state == TrialState.FAIL for n in left_running)  # the killed trial (if any)
    assert not after.get_trials(states=(TrialState.RUNNING,))


def test_only_trials_of_dead_workers_are_failed(tmp_path, monkeypatch):
    study = tune.create_study(str(tmp_path / "optuna.journal"))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    live, dead, reused, unclaimed = study.ask(), study.ask(), study.ask(), study.ask()
    for trial, pid in ((live, os.getpid()), (dead, gone.pid), (reused, os.getpid())):
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", pid)
    live.set_user_attr("process", tune.process_start(os.getpid()))
    reused.set_user_attr("process", "an-earlier-boot:123")  # its worker died, and this process got its pid
    assert tune.process_start(os.getpid()) is not None  # Linux: /proc tells
    assert tune.fail_dead_trials(study) == [dead.number, reused.number]
    assert tune.count_claimed(study) == 2  # live and the unclaimed one, which may be just starting

    later = datetime.datetime.now() + datetime.timedelta(minutes=6)  # nobody claimed it for 6 minutes
    monkeypatch.setattr(tune, "datetime", SimpleNamespace(datetime=SimpleNamespace(now=lambda: later),
                                                          timedelta=datetime.timedelta))
    assert tune.fail_dead_trials(study) == [unclaimed.number]
    # and no retry is queued: they drew no point (test_a_dead_workers_trial_is_queued_again_once)
    assert [t.state for t in study.trials] == [TrialState.RUNNING] + [TrialState.FAIL] * 3


def test_a_dead_workers_trial_is_queued_again_once(tmp_path):
    study = tune.create_study(str(tmp_path / "optuna.journal"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.enqueue_trial({"x": 0.5}, user_attrs={"reference": "default"})
    dead = study.ask(space)
    for key, value in (("host", socket.gethostname()), ("pid", gone.pid)):
        dead.set_user_attr(key, value)
    assert tune.fail_dead_trials(study) == [dead.number]
    assert tune.fail_dead_trials(study) == []  # already failed: no second retry
    retry = study.get_trials(states=(TrialState.WAITING,))
    assert len(retry) == 1 and retry[0].user_attrs == {"reference": "default", "retry_of": dead.number, "retries": 1}

    again = study.ask(space)  # the retry runs with the same parameters, and its worker dies too, ... up to MAX_RETRIES
    assert again.number == retry[0].number and again.params == {"x": 0.5}
    study.tell(again, state=TrialState.FAIL)
    tune.retry_trial(study, study.trials[again.number])
    assert study.trials[-1].user_attrs["retry_of"] == dead.number and study.trials[-1].user_attrs["retries"] == 2
    # killed before it drew its (queued) point: the retry chain goes on, with that point
    early = study.ask()  # the next queued retry; its worker dies before suggest_config
    for key, value in (("host", socket.gethostname()), ("pid", gone.pid)):
        early.set_user_attr(key, value)
    assert early.params == {} and tune.fail_dead_trials(study) == [early.number]
    assert study.trials[-1].state == TrialState.WAITING and study.trials[-1].system_attrs["fixed_params"] == {"x": 0.5}
    assert study.trials[-1].user_attrs == {"reference": "default", "retry_of": dead.number, "retries": 3}
    last = SimpleNamespace(number=9, params={"x": 0.5}, user_attrs={"retry_of": 0, "retries": tune.MAX_RETRIES})
    n = len(study.trials)
    tune.retry_trial(study, last)
    assert len(study.trials) == n  # given up


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_study_moved_to_another_machine_retries_the_trials_left_running_there(tmp_path):
    """A journal file serves one machine: a trial claimed on another host was left running when the study's
    folder was copied here, and would otherwise hold its slot forever; a database's other hosts are alive."""
    elsewhere = {"host": socket.gethostname() + "-before", "pid": os.getpid(), "process": "another-boot:1"}
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    journal = tune.create_study(str(tmp_path / "optuna.journal"))
    database = tune.create_study(f"sqlite:///{tmp_path}/optuna.db")
    for study in (journal, database):
        trial = study.ask(space)
        for key, value in elsewhere.items():
            trial.set_user_attr(key, value)
    assert tune.trial_table(journal).state.tolist() == ["STOPPED"]
    assert tune.trial_table(database).state.tolist() == ["RUNNING"]
    assert tune.fail_dead_trials(journal) == [0] and tune.fail_dead_trials(database) == []
    assert [t.state for t in journal.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert journal.trials[1].user_attrs == {"retry_of": 0, "retries": 1}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_stale_trial_in_a_database_is_queued_again(tmp_path, monkeypatch):
    """RDB storages find dead workers by their heartbeat (workers on many machines): the same retry."""
    monkeypatch.setattr(tune, "HEARTBEAT_S", 1)  # stale after 2 s without a heartbeat
    study = tune.create_study(f"sqlite:///{tmp_path}/optuna.db")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study._storage.record_heartbeat(trial._trial_id)  # what a worker's heartbeat thread does, then it died
    time.sleep(3)
    tune.fail_dead_trials(study)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].system_attrs["fixed_params"] == trial.params
    assert study.trials[1].user_attrs == {"retry_of": 0, "retries": 1}


def test_a_resumed_worker_draws_new_trials(tmp_path):
    """Each start of a worker samples anew: a sampler seeded as before would replay its first (random)
    trials, which a study resumed every few hours would then train again. Run the same way, a study
    draws the same trials."""
    space = {"x": optuna.distributions.FloatDistribution(0, 1), "y": optuna.distributions.IntDistribution(0, 99)}

    def two_starts(journal):
        drawn = []
        for _ in range(2):  # the worker is stopped, then rerun on the same storage
            study = tune.create_study(str(journal), seed=0)
            trial = study.ask(space)
            study.tell(trial, 0.5)
            drawn.append(trial.params)
        return drawn
    first, second = two_starts(tmp_path / "a.journal")
    assert first != second
    assert two_starts(tmp_path / "b.journal") == [first, second]
    study = tune.create_study(str(tmp_path / "c.journal"), seed=0, worker=1)
    assert study.ask(space).params != first  # another worker, another draw


class Killed(BaseException):
    """What a kill is to a trial: it escapes Optuna (no Exception, no KeyboardInterrupt), which leaves it RUNNING."""


def _die_at_epoch(data, out, epoch) -> None:
    """A worker process whose training is killed during `epoch` of trial 0."""
    real = fer_lib.train.run_epoch
    fer_lib.train.run_epoch = lambda s, e: os._exit(9) if e == epoch else real(s, e)
    tune.run_study(data, out, search(n_trials=1, epochs_per_trial=3), TrainConfig(**TINY), threads=1)


def test_a_killed_trial_goes_on_after_its_last_epoch(synthetic_h5, tmp_path, monkeypatch, capsys):
    """A worker killed in epoch 2 of 3: the rerun (with the data moved meanwhile) fails its trial, queues
    it again, and the retry trains epochs 2 and 3 only, ending where the trial would have ended unkilled."""
    run = dict(budget=search(n_trials=1, epochs_per_trial=3), base=TrainConfig(**TINY), threads=1)
    whole = tune.run_study(str(synthetic_h5), str(tmp_path / "whole"), **run).trials[0]

    worker = multiprocessing.get_context("fork").Process(target=_die_at_epoch,
                                                           args=(str(synthetic_h5), str(tmp_path / "cut"), 2))
    worker.start()
    worker.join(300)
    assert worker.exitcode == 9
    ck = torch.load(tmp_path / "cut" / "trials" / "fer" / "trial_0" / "last.pt", weights_only=False)
    assert ck["epoch"] == 1

    trained, real = [], fer_lib.train.run_epoch
    monkeypatch.setattr(fer_lib.train, "run_epoch", lambda s, e: trained.append(e) or real(s, e))
    judged = []  # the epochs the pruner sees: the killed trial's verdict on epoch 1 stands; the last one is not judged
    monkeypatch.setattr(tune, "create_pruner", lambda *a: SimpleNamespace(prune=lambda study, t: judged.append(
        t.last_step)))
    moved = shutil.copy(synthetic_h5, tmp_path / "moved.h5")
    study = tune.run_study(str(moved), str(tmp_path / "cut"), **run)
    assert "trial 1 goes on after epoch 1 of trial 0" in capsys.readouterr().out
    killed, retry = study.trials
    assert killed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert trained == [2, 3] and judged == [2]
    assert retry.user_attrs["reference"] == whole.user_attrs["reference"] and retry.user_attrs["retry_of"] == 0
    assert retry.params == whole.params and retry.user_attrs["pruner"] == "none"
    assert retry.intermediate_values == whole.intermediate_values and retry.value == whole.value
    assert not (tmp_path / "cut" / "trials").exists()


def test_an_interrupted_trial_is_queued_again(synthetic_h5, tmp_path, monkeypatch):
    """Ctrl-C (a notebook's interrupt) in epoch 2: Optuna fails the trial; its retry is queued, its epoch 1 kept."""
    base = TrainConfig(**TINY, data=str(synthetic_h5), out=str(tmp_path), epochs=2, train_fraction=0.3, progress=False)
    study = tune.create_study(str(tmp_path / "optuna.journal"))
    study.enqueue_trial(UNTUNED)
    real = fer_lib.train.run_epoch

    def interrupted(s, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(s, epoch)
    monkeypatch.setattr(fer_lib.train, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(lambda trial: tune.objective(trial, base), n_trials=1)
    first, retry = study.trials
    assert first.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.system_attrs["fixed_params"] == first.params  # what a waiting trial will be asked with
    assert retry.user_attrs == {"retry_of": 0, "retries": 1}
    assert torch.load(tmp_path / "trials" / "fer" / "trial_0" / "last.pt", weights_only=False)["epoch"] == 1


def scramble_test_split(src, dst) -> None:
    """A copy of the HDF5 whose PrivateTest images are noise and every label is wrong."""
    shutil.copy(src, dst)
    rng = np.random.default_rng(1)
    with h5py.File(dst, "a") as f:
        g = f["test"]
        old = g["labels"][:]
        g["labels"][...] = (old + rng.integers(1, 7, len(old))) % 7
        g["images"][...] = rng.integers(0, 256, g["images"].shape, dtype=np.uint8)
        g.attrs["class_counts"] = np.bincount(g["labels"][:], minlength=7)
        assert (g["labels"][:] != old).all()


def test_study_never_reads_the_test_split(synthetic_h5, tmp_path, monkeypatch):
    scrambled = tmp_path / "scrambled.h5"
    scramble_test_split(synthetic_h5, scrambled)
    splits_read, load_split = [], fer_lib.train.load_split
    monkeypatch.setattr(fer_lib.train, "load_split",
                        lambda path, split, **kw: splits_read.append(split) or load_split(path, split, **kw))

    def trials(h5, out):
        study = tune.run_study(str(h5), str(tmp_path / out), search(n_trials=4, epochs_per_trial=2, pruner="median"),
                               TrainConfig(**TINY, epochs=2, train_fraction=0.3))
        final = tune.retrain_finalists(study, str(h5), tmp_path / out, k=1)
        return [(t.number, t.state, t.params, t.value, t.intermediate_values) for t in study.trials] + \
            [(r["trial"], r["final_val_acc"], r["final_epoch"]) for r in final["finalists"]]

    original, with_scrambled_test = trials(synthetic_h5, "a"), trials(scrambled, "b")
    assert original == with_scrambled_test
    assert set(splits_read) == {"train", "val"}
    complete = [t for t in original if len(t) > 3 and t[1] == TrialState.COMPLETE]
    assert complete and all(set(t[4]) == {1, 2} for t in complete)  # PublicTest reported every epoch


def test_median_pruner_stops_trials_below_the_median(tmp_path):
    study = tune.create_study(str(tmp_path / "prune.journal"), "scripted", seed=0, pruner="median")

    def scripted(trial):  # 5 good trials, then bad ones
        acc = 0.8 if trial.number < 5 else 0.2
        for epoch in range(1, 5):
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return acc

    study.optimize(scripted, n_trials=8)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5 + [TrialState.PRUNED] * 3
    assert [max(t.intermediate_values) for t in study.trials[5:]] == [2, 2, 2]  # epoch 1 is never pruned


def test_hyperband_pruner_prunes(tmp_path):
    study = tune.create_study(str(tmp_path / "hb.journal"), "scripted", seed=0, pruner="hyperband")

    def scripted(trial):
        x = trial.suggest_float("x", 0, 1)
        for epoch in range(1, 10):
            trial.report(x * epoch, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return x * 9

    study.optimize(scripted, n_trials=20)
    assert study.get_trials(states=(TrialState.PRUNED,))
    with pytest.raises(ValueError, match="unknown pruner 'asha'"):
        tune.create_pruner("asha")


def test_a_bad_pruner_writes_nothing(synthetic_h5, tmp_path):
    with pytest.raises(UserError, match="--pruner asha .*one of halving, hyperband"):
        tune.run_study(str(synthetic_h5), str(tmp_path / "tune"), search(n_trials=0, pruner="asha"))
    with pytest.raises(UserError, match="--reduction-factor 1 .*at least 2"):
        tune.run_study(str(synthetic_h5), str(tmp_path / "tune"), search(n_trials=0, epochs_per_trial=4,
                                                                         pruner="halving", min_epochs=3,
                                                                         reduction_factor=1))
    assert not (tmp_path / "tune").exists()


def _constant(values):
    """A scripted objective: trial n reports values[n] at each of 9 epochs (or the list values[n], epoch by epoch)."""
    def objective(trial):
        v = values[trial.number]
        v = v if isinstance(v, list) else [v] * 9
        for epoch in range(1, 10):
            trial.report(v[epoch - 1], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return v[-1]
    return objective


def test_halving_keeps_the_best_third_at_its_rung(tmp_path):
    study = tune.create_study(str(tmp_path / "sh.journal"), "scripted", pruner="halving", min_epochs=3, max_epochs=9)
    late_drop = [0.9] * 8 + [0.0]  # judged at epoch 3 only: never pruned at the trial's last epoch
    values = [0.5, 0.6, 0.4, 0.7, 0.3, 0.55, 0.65, late_drop]
    study.optimize(_constant(values), n_trials=len(values))
    # trials 0-2: too few others to rank; 3: best; 4, 5: 4 and 2 better among 5 and 6 (keep 2);
    # 6: 1 better among 7 (keep 3); 7: the best at epoch 3
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4 + [TrialState.PRUNED] * 2 + \
        [TrialState.COMPLETE] * 2
    assert [t.last_step for t in study.trials if t.state == TrialState.PRUNED] == [3, 3]
    assert tune.create_pruner("halving", 1, 9).rungs(9) == [1, 3] and tune.HalvingPruner(2).rungs(20) == [2, 6, 18]


def test_halving_by_half(tmp_path, monkeypatch):
    """reduction_factor 2 (the full profile's): the best half at epoch 3, then at 6, from the profile to every worker."""
    study = tune.create_study(str(tmp_path / "sh.journal"), "scripted", pruner="halving", min_epochs=3, max_epochs=9,
                              reduction_factor=2)
    fades = [0.7] * 3 + [0.1] * 6  # in the best half at epoch 3, the worst at 6
    study.optimize(_constant([0.5, 0.6, 0.55, 0.3, fades, 0.56]), n_trials=6)
    # 2: 1 of 3 better, keep 2; 3: 3 of 4 better; 4: the best at 3, 3 of 4 better at 6; 5: 2 of 6 better at 3
    # (keep 3), 1 of 5 at 6 (keep 3)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED] * 2 + \
        [TrialState.COMPLETE]
    assert [t.last_step for t in study.trials[3:5]] == [3, 6]

    profile = Path(__file__).resolve().parents[1] / "configs" / "profiles" / "full.yaml"
    budget = tune.dataclass_from_arguments(SimpleNamespace(), tune.TuneConfig, tune.read_config(profile)["tune"])
    assert (budget.pruner, budget.min_epochs, budget.reduction_factor) == ("halving", 3, 2)


def test_every_worker_searches_with_the_whole_budget(tmp_path, monkeypatch):
    """The second worker reads the first one's budget and recipe whole, as `fer tune` parses its command
    (a field passed one by one can be forgotten: reduction_factor once was)."""
    import argparse
    profile = Path(__file__).resolve().parents[1] / "configs" / "profiles" / "full.yaml"
    budget = dataclasses.replace(tune.dataclass_from_arguments(SimpleNamespace(), tune.TuneConfig,
                                                               tune.read_config(profile)["tune"]),
                                 n_trials=7, reduction_factor=4, timeout=None, final_epochs=12, study_name="s")
    recipe = resolve_config(profile, data="x.h5", out=str(tmp_path), seed=3)
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    tune._start_workers(budget, recipe, tmp_path, "")
    assert len(started) == budget.workers - 1 == 1
    parser = argparse.ArgumentParser()
    tune.add_arguments(parser)
    args = parser.parse_args(started[0][started[0].index("tune") + 1:])
    seen = tune.dataclass_from_arguments(args, tune.TuneConfig, tune.read_config(args.config).get("tune", {}))
    assert seen == dataclasses.replace(budget, workers=1, final_top=0)  # the finalists are the first worker's
    assert resolve_config(args.config, data=args.data, out=args.out) == recipe
    assert (args.worker, args.threads) == (1, 1)


def test_halving_counts_a_retried_trial_once(tmp_path):
    """A failed trial's epochs are not a rival's: its retry carries them (Optuna's SuccessiveHalvingPruner
    counted both, and a study that ran Hyperband before is judged on the epochs alone)."""
    study = tune.create_study(str(tmp_path / "sh.journal"), "scripted", pruner="hyperband", min_epochs=3,
                              max_epochs=9)
    for v in (0.8, 0.8, 0.8):  # three failed copies of one strong trial
        study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, intermediate_values={1: v, 2: v, 3: v}))
    study.optimize(_constant([None] * 3 + [0.8, 0.5, 0.4, 0.45]), n_trials=4)  # hyperband: its rung keys
    study = tune.create_study(str(tmp_path / "sh.journal"), "scripted", pruner="halving", min_epochs=3,
                              max_epochs=9)  # resumed with another pruner
    study.optimize(_constant([None] * 7 + [0.5, 0.6, 0.3]), n_trials=3)
    # among trials 3-6 (0.8, 0.5, 0.4, 0.45) and each other, 0.5 and 0.6 are in the best third; with the
    # failed copies (0.8 three times more) neither would be
    assert [t.state for t in study.trials[7:]] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]


def test_rung_agreement_says_which_epoch_ranks_like_the_end(tmp_path):
    study = tune.create_study(str(tmp_path / "r.journal"), "scripted", pruner="none")
    study.set_user_attr("epochs_per_trial", 3)
    curves = [[0.5, 0.6, 0.7], [0.6, 0.55, 0.6], [0.4, 0.5, 0.65], [0.7, 0.4]]  # the last: pruned at 2
    for curve in curves:
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE if len(curve) == 3 else TrialState.PRUNED, value=max(curve),
            intermediate_values=dict(enumerate(curve, 1))))
    table = tune.rung_agreement(study)
    assert list(table.index) == [1, 2, 3] and set(table["trials"]) == {3}
    assert table["spearman_with_best"].tolist() == pytest.approx([-0.5, 0.5, 1.0])  # best: 0.7, 0.6, 0.65


def test_resumed_study_must_keep_its_budget(synthetic_h5, tmp_path):
    tune.run_study(str(synthetic_h5), str(tmp_path), search(n_trials=0, epochs_per_trial=2))
    with pytest.raises(ValueError, match="epochs_per_trial=2, not 3"):
        tune.run_study(str(synthetic_h5), str(tmp_path), search(n_trials=0, epochs_per_trial=3))
    with pytest.raises(ValueError, match="study 'fer' was run with base_config="):
        tune.run_study(str(synthetic_h5), str(tmp_path), search(n_trials=0, epochs_per_trial=2), TrainConfig(**TINY))
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        tune.run_study(str(tmp_path / "missing.h5"), str(tmp_path))


def test_compare_with_original():
    table = tune.compare_with_original({"lr": 0.01, "model": "vgg_small", "augment": 0.5})
    assert list(table.index) == ["lr", "model", "augment", "optimizer", "batch_size", "scheduler", "drop_rate"]
    assert table.loc["lr"].tolist() == [1e-3, 0.01]
    assert table.loc["model"].tolist() == ["baseline", "vgg_small"]
    assert table.loc["augment"].tolist() == [None, 0.5]


UNTUNED = {"optimizer": "sgd", "lr": 0.05, "batch_size": 128, "weight_decay": 5e-4, "scheduler": "onecycle",
           "model": "vgg_small", "width_mult": 1.0, "activation": "relu", "drop_rate": 0.4, "stage_drop": 0.1,
           "label_smoothing": 0.1, "augment": 1.0, "erase": 0.25, "crop": 0, "mixup": 0.0, "cutmix": 0.0,
           "ema_decay": 0.0}  # TrainConfig's defaults, vgg_small's own dropouts spelt out


def test_the_references_are_the_first_trials(synthetic_h5, tmp_path):
    """Trial 0 is the engine's untuned default, trial 1 the recipe searched around (its tuned stage
    dropout in model_args, a StepLR in epochs read as its share of the recipe's epochs)."""
    recipe = TrainConfig(model_args={**TINY["model_args"], "stage_drop": 0.0}, augment=0.5, erase=0.0,
                         batch_size=64, scheduler="step", step_size=3, gamma=0.5, epochs=6)
    study = tune.run_study(str(synthetic_h5), str(tmp_path), search(n_trials=3), recipe)
    default, mine = study.trials[:2]
    assert [t.user_attrs["reference"] for t in (default, mine)] == ["default", "recipe"]
    assert default.state == mine.state == TrialState.COMPLETE
    assert default.user_attrs["machine"]["precision"] in ("fp32", "bfloat16")  # where it ran: a study may span CPUs
    assert default.user_attrs["machine"]["torch_threads"] == torch.get_num_threads()
    assert describe_machine(default.user_attrs["machine"]).endswith(
        f"{default.user_attrs['machine']['precision']}, {torch.get_num_threads()} thread"
        f"{'s' * (torch.get_num_threads() != 1)})")  # notebook 03's "ran on" column
    assert default.params == UNTUNED
    assert mine.params == {**UNTUNED, "batch_size": 64, "scheduler": "step", "step_fraction": 0.5, "gamma": 0.5,
                           "stage_drop": 0.0, "augment": 0.5, "erase": 0.0}
    summary = tune.summarize_study(study)
    assert summary["default_trial"]["value"] == default.value and summary["recipe_trial"]["value"] == mine.value
    # from the storage alone, each trial's whole config: at the trial's budget and at the recipe's
    assert tune.trial_config(study, mine, final=True).model_args == recipe.model_args
    assert tune.trial_config(study, mine).epochs == 1 and tune.trial_config(study, mine, final=True).epochs == 6
    resumed = tune.run_study(str(synthetic_h5), str(tmp_path), search(n_trials=4), recipe)  # not enqueued again
    assert [t.user_attrs.get("reference") for t in resumed.trials] == ["default", "recipe", None, None]
    as_it_stands = tune.run_study(str(synthetic_h5), str(tmp_path), search(n_trials=10, timeout=0),
                                  recipe)  # --timeout 0: report, no trial
    assert len(as_it_stands.trials) == 4 and (tmp_path / "best_params.json").exists()
    with pytest.raises(ValueError, match="step_fraction"):  # a base outside the space is refused, not half-run
        tune.suggest_config(optuna.trial.FixedTrial({**UNTUNED, "scheduler": "step"}), recipe)
    with pytest.raises(UserError, match="outside the search space.*'vgg' not in"):
        tune.run_study(str(synthetic_h5), str(tmp_path / "vgg"), search(n_trials=1), TrainConfig(model="vgg"))
    assert not (tmp_path / "vgg").exists()  # refused before anything is written


def test_a_killed_reference_trial_is_run_again(synthetic_h5, tmp_path):
    """Trial 0 killed (marked FAIL): the rerun queues the default again, and readers find it."""
    study = tune.create_study(str(tmp_path / "optuna.journal"), "fer")
    study.enqueue_trial(UNTUNED, user_attrs={"reference": "default"})
    t = study.ask()
    study.tell(t, state=TrialState.FAIL)
    resumed = tune.run_study(str(synthetic_h5), str(tmp_path), search(n_trials=2), TrainConfig(**TINY))
    defaults = [t for t in resumed.trials if "default" in t.user_attrs.get("reference", "").split("+")]
    assert [t.state for t in defaults] == [TrialState.FAIL, TrialState.COMPLETE]
    best = json.loads((tmp_path / "best_params.json").read_text())
    assert best["default_trial"]["number"] == defaults[1].number


class PruneAll(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_references_are_never_pruned(synthetic_h5, tmp_path):
    """A pruner that stops every trial at its first report stops none of the references: each finalist
    has a full-budget score to be compared with."""
    base = TrainConfig(**TINY, data=str(synthetic_h5), out=str(tmp_path), epochs=2, train_fraction=0.3, progress=False)
    study = optuna.create_study(direction="maximize", pruner=PruneAll(), sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(UNTUNED, user_attrs={"reference": "default"})
    study.enqueue_trial(UNTUNED)
    study.optimize(lambda trial: tune.objective(trial, base), n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert set(study.trials[0].intermediate_values) == {1, 2} and set(study.trials[1].intermediate_values) == {1}
    assert not (tmp_path / "trials").exists()  # a trial's checkpoint lives while it runs, pruned or not
    assert isinstance(tune.create_pruner("hyperband", 2, 9), optuna.pruners.HyperbandPruner)


def test_finalists_are_retrained_at_the_recipes_budget(synthetic_h5, tmp_path):
    recipe = TrainConfig(**TINY, epochs=2, train_fraction=0.3, batch_size=64)
    study = tune.run_study(str(synthetic_h5), str(tmp_path), search(n_trials=5), recipe)
    final = tune.retrain_finalists(study, str(synthetic_h5), tmp_path, k=2)
    rows = final["finalists"]
    searched = sorted((t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "reference" not in t.user_attrs),
                      key=lambda t: -t.value)
    assert [r["role"] for r in rows] == ["default", "recipe", "search #1", "search #2"]
    assert [r["trial"] for r in rows] == [0, 1, searched[0].number, searched[1].number]
    for r in rows:  # each run is the trial's parameters on the recipe, at the recipe's epochs and share of Training
        trial = study.trials[r["trial"]]
        cfg = json.loads((Path(r["run"]) / "config.json").read_text())
        history = json.loads((Path(r["run"]) / "history.json").read_text())
        assert {k: cfg[k] for k in trial.params} == trial.params
        assert (cfg["epochs"], cfg["train_fraction"], len(history)) == (2, 0.3, 2)
        assert r["final_val_acc"] == max(h["val_acc"] for h in history) and r["proxy_val_acc"] == trial.value
    proxy, scored = [r["proxy_val_acc"] for r in rows], [r["final_val_acc"] for r in rows]
    rho = final["spearman_proxy_final"]
    assert rho is None or rho == pytest.approx(spearmanr(proxy, scored).statistic)
    chosen = max(rows, key=lambda r: r["final_val_acc"])
    assert final["chosen"] == chosen["trial"]
    assert final["search_best"] == max(rows[2:], key=lambda r: r["final_val_acc"])["trial"]
    # notebook 04's rows, chosen here on PublicTest: each names its finalist's own checkpoint
    table = tune.final_table(final)
    assert [(t["label"], t["trial"]) for t in table] == [
        ("untuned default", 0), ("hand recipe", 1), ("search best", final["search_best"])]
    for t in table:
        row = next(r for r in rows if r["trial"] == t["trial"])
        assert t["val_accuracy"] == row["final_val_acc"] and Path(t["checkpoint"]) == Path(row["run"]) / "best.pt"
        assert torch.load(t["checkpoint"], weights_only=False)["epoch"] == row["final_epoch"]
    # `fer train --config best_params.json` trains exactly the chosen finalist's run
    best = json.loads((tmp_path / "best_params.json").read_text())
    assert best["trial"] == chosen["trial"] and "finalists" in best["chosen_by"]
    ran = json.loads((Path(chosen["run"]) / "config.json").read_text())
    assert dataclasses.asdict(resolve_config(str(tmp_path / "best_params.json"), data=ran["data"], out=ran["out"],
                                             progress=ran["progress"])) == ran
    # a rerun (after a kill, say) finds the runs finished and trains nothing again
    again = tune.retrain_finalists(study, str(synthetic_h5), tmp_path, k=2)
    assert again == final
    # kept (fer study --keep-trainings), the finalists are not trained again on another machine
    kept = tmp_path / "kept"
    assert {what for _, what in chain.keep_trainings(tmp_path / "final", kept)} == {"kept"}
    elsewhere = tune.retrain_finalists(study, str(synthetic_h5), tmp_path / "elsewhere", k=2, kept=(kept,))
    assert not (tmp_path / "elsewhere" / "final").exists()
    assert [Path(r["run"]).parent for r in elsewhere["finalists"]] == [kept] * 4
    assert [{**r, "run": None} for r in elsewhere["finalists"]] == [{**r, "run": None} for r in final["finalists"]]


def test_final_table_names_a_shared_reference_twice_and_skips_what_is_missing():
    merged = {"finalists": [{"role": "default+recipe", "trial": 0, "final_val_acc": 0.5, "run": "r0"}],
              "search_best": None}  # the recipe was the default, and no searched trial finished
    assert [(t["label"], t["checkpoint"]) for t in tune.final_table(merged)] == [
        ("untuned default", str(Path("r0") / "best.pt")), ("hand recipe", str(Path("r0") / "best.pt"))]
    assert tune.final_table({"finalists": [], "search_best": None}) == []


def test_any_trial_is_reproducible_from_the_storage(synthetic_h5, tmp_path, capsys):
    """fer tune --export-trial N writes trial N's whole config; fer train --config trains that trial again."""
    from fer_lib.cli import main
    base = tmp_path / "base.json"
    base.write_text(json.dumps({**TINY, "augment": 0.5}))
    args = ["tune", "--data", str(synthetic_h5), "--out", str(tmp_path), "--config", str(base), "--epochs", "1",
            "--train-fraction", "0.3", "--n-trials", "3", "--pruner", "none", "--final-top", "0"]
    assert main(args) == 0
    study = load(str(tmp_path / "optuna.journal"))
    trial = study.trials[2]
    assert main([*args, "--export-trial", "2"]) == 0
    exported = json.loads((tmp_path / "trial_2.json").read_text())["train_config"]
    assert {k: exported[k] for k in trial.params} == trial.params
    assert (exported["epochs"], exported["train_fraction"], exported["augment"]) == (1, 0.3, trial.params["augment"])
    assert exported["model_args"] == TINY["model_args"]
    run = tmp_path / "again"
    assert main(["train", "--data", str(synthetic_h5), "--config", str(tmp_path / "trial_2.json"), "--out", str(run),
                 "--progress", "false"]) == 0
    again = json.loads((run / "history.json").read_text())
    assert max(r["val_acc"] for r in again) == pytest.approx(trial.value)  # the same trial, trained again
    capsys.readouterr()
    assert main([*args, "--export-trial", "7"]) == 2
    assert "no such trial" in capsys.readouterr().err
    assert main([*args[:-2], "--study", "other", "--export-trial", "0"]) == 2
    before = (tmp_path / "trial_2.json").read_bytes()                 # an export is replaced only when asked
    capsys.readouterr()
    assert main([*args, "--export-trial", "2", "--final-budget"]) == 2
    assert "trial_2.json: exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "trial_2.json").read_bytes() == before
    assert main([*args, "--export-trial", "2", "--final-budget", "--overwrite"]) == 0
    assert (tmp_path / "trial_2.json").read_bytes() != before


def test_expected_epochs_follow_the_rungs():
    """A trial's epochs under halving: all train to the first rung, 1/factor of them to the next, ... to the end."""
    by_halves = dict(pruner="halving", epochs=9, min_epochs=3, reduction_factor=2)
    assert tune.expected_epochs(**by_halves) == 3 + 3 / 2 + 3 / 4  # rungs 3 and 6 (the README's 5.25)
    assert tune.expected_epochs(**by_halves, after=3) == 3 + 3 / 2  # running past epoch 3: it passed that rung
    assert tune.expected_epochs(**by_halves, after=4) == 2 + 3 / 2
    assert tune.expected_epochs(**by_halves, after=9) == 0
    assert tune.expected_epochs("halving", 9, 3, 3) == 3 + 6 / 3  # by thirds: one rung, at 3
    assert tune.expected_epochs("median", 9, 3, 2, after=2) == 7  # no rungs to count on: the whole budget


def test_status_shows_a_running_study_and_writes_nothing(synthetic_h5, tmp_path, capsys):
    """fer tune --status: the trials, a trial whose worker is gone, what is left and its time, nothing written."""
    from fer_lib.cli import main
    base = tmp_path / "base.json"
    base.write_text(json.dumps({**TINY, "augment": 0.5, "epochs": 3}))  # not the default: two references
    out = tmp_path / "tune"
    args = ["tune", "--data", str(synthetic_h5), "--out", str(out), "--config", str(base), "--epochs", "2",
            "--train-fraction", "0.3", "--n-trials", "3", "--pruner", "none", "--final-top", "1"]
    assert main([*args[:-2], "--final-top", "0"]) == 0  # the two references and a search trial
    study = load(str(out / "optuna.journal"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    stopped = study.ask()  # a worker died in its first epoch
    stopped.set_user_attr("host", socket.gethostname())
    stopped.set_user_attr("pid", gone.pid)
    stopped.report(0.5, 1)
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    capsys.readouterr()
    assert main([*args[:-6], "--n-trials", "5", "--pruner", "none", "--final-top", "1", "--status"]) == 0
    printed = capsys.readouterr().out
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before
    table = tune.trial_table(study)
    assert table["state"].tolist() == ["COMPLETE"] * 3 + ["STOPPED"]
    assert table["role"].tolist()[:2] == ["default", "recipe"] and table["epochs"].tolist() == [2, 2, 2, 1]
    assert table.loc[2, "best"] == max(study.trials[2].intermediate_values.values())
    progress = tune.study_progress(study, tune.TuneConfig(n_trials=5, pruner="none", final_top=1), out)
    # the stopped trial's 1 epoch and one new trial's 2; three finalists (2 references, 1 searched) of 3 epochs
    assert (progress["finished"], progress["running"], progress["search_epochs_left"]) == (3, 1, 1 + 2)
    assert progress["final_epochs_left"] == 3 * 3 and progress["rate_trials"] == 3
    assert "3 of 5 trials finished, 1 running" in printed and "STOPPED" in printed
    assert f"end now (best PublicTest within 2 epochs): default trial 0 {study.trials[0].value:.4f}, recipe trial 1 " \
        f"{study.trials[1].value:.4f}, search #1 trial 2 {study.trials[2].value:.4f}\n" in printed
    assert "about 3 epochs of search (none), then 9 of the finalists: about" in printed
    assert "median of 3 finished trials on this CPU" in printed

    assert main([*args[:-2], "--final-top", "1"]) == 0  # the search to its 3 trials, then its 3 finalists
    done = tune.study_progress(study, tune.TuneConfig(n_trials=3, pruner="none", final_top=1), out)
    assert done["final_epochs_left"] == 0 and sum(done["final_epochs_done"].values()) == 9
    assert main(["tune", "--out", str(tmp_path / "none"), "--status"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_two_workers_from_one_call(synthetic_h5, tmp_path):
    """workers=2 (notebook 03): a second process on the same study, one thread each, one shared budget."""
    threads = torch.get_num_threads()
    study = tune.run_study(str(synthetic_h5), str(tmp_path), search(n_trials=6, workers=2), TrainConfig(**TINY))
    assert len(study.get_trials(states=FINISHED)) == 6 and not study.get_trials(states=(TrialState.RUNNING,))
    assert len({t.user_attrs["pid"] for t in study.get_trials(states=FINISHED)}) <= 2
    assert "finished trials" in (tmp_path / "worker_1.log").read_text()  # it ran to its end, on this study
    assert torch.get_num_threads() == threads  # the caller's threads are given back


def test_readers_cope_with_a_study_without_its_default(tmp_path):
    from fer_lib.report import search_summary
    summary = {"n_trials": 2, "n_pruned": 0, "search": {"epochs_per_trial": 1, "train_fraction": 0.3},
               "best_trial": 1, "best_value": 0.5}
    (tmp_path / "s.json").write_text(json.dumps(summary))
    assert "has not finished" in search_summary(tmp_path / "s.json") and "50.00%" in search_summary(tmp_path / "s.json")


@pytest.mark.postgres
def test_a_storage_that_cannot_be_opened_is_one_line(synthetic_h5, tmp_path, capsys, monkeypatch):
    """A database that is not there (or refuses us) names the storage, password masked, and exits 2."""
    from fer_lib.cli import main
    monkeypatch.setattr(tune.time, "sleep", lambda s: None)  # its retries (workers racing to create tables)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # a port nothing listens on once closed
    bad = [f"postgresql://fer:s3cret@127.0.0.1:{port}/fer", f"sqlite:///{tmp_path}/no/such/folder/x.db"]
    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is None:
        bad = bad[1:]  # without the [postgres] extra the driver is what is missing
    for url in bad:
        for extra in (["--status"], ["--data", str(synthetic_h5), "--n-trials", "0"]):
            capsys.readouterr()
            assert main(["tune", "--out", str(tmp_path / "run"), "--storage", url, *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "cannot open this Optuna storage" in err and "s3cret" not in err
            assert url.replace(":s3cret@", ":***@") in err


def test_a_storage_password_is_never_written_or_printed(synthetic_h5, tmp_path):
    url = os.environ.get("FER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server (set FER_TEST_POSTGRES_URL, e.g. via .ci/postgres.sh)")
    from fer_lib.io import split_url_password
    _, password = split_url_password(url)
    assert password, "the CI server's URL carries a password"
    name = f"test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, tune.STORAGE_ENV: url}  # from the environment: not on the command line either
    done = subprocess.run(fer_tune(synthetic_h5, tmp_path, "--study", name, "--n-trials", "1"), env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    written = "\n".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    assert f":{password}@" not in written + done.stdout + done.stderr
    shown = tune.describe_storage(url, tmp_path)  # what notebook 03 prints
    assert ":***@" in shown and f":{password}@" not in shown
    optuna.delete_study(study_name=name, storage=tune.open_storage(url))


def test_transfer_plot_labels_every_finalist_on_alternate_sides():
    from fer_lib.plots import plot_transfer
    rows = [{"role": role, "trial": t, "proxy_val_acc": p, "final_val_acc": f}
            for role, t, p, f in [("default", 2, 0.607, 0.634), ("recipe", 3, 0.631, 0.653),
                                  ("search #1", 33, 0.631, 0.654)]]
    fig = plot_transfer({"finalists": rows, "spearman_proxy_final": 0.5, "final_budget": {"epochs": 18}})
    ax = fig.axes[0]
    labels = {t.get_text(): t.get_horizontalalignment() for t in ax.texts}
    assert labels == {"search #1 (trial 33)": "left", "recipe (trial 3)": "right", "default (trial 2)": "left"}
    assert ax.get_title().endswith("Spearman +0.50") and ax.get_ylabel() == "PublicTest % after 18 epochs"


def test_a_resumed_search_keeps_one_timeout_over_its_sittings():
    """The full profile's search is stopped with each session: its timeout is the search's time in all, the
    finished trials' durations over the workers, not a new allowance per sitting."""
    import datetime
    from optuna.distributions import FloatDistribution
    from optuna.trial import FrozenTrial
    study = optuna.create_study(direction="maximize")
    t0 = datetime.datetime(2026, 12, 7, 12, 0)
    for i, (minutes, state) in enumerate([(30, TrialState.COMPLETE), (20, TrialState.PRUNED), (50, TrialState.FAIL)]):
        study.add_trial(FrozenTrial(number=i, state=state, value=0.5 if state == TrialState.COMPLETE else None,
                                    datetime_start=t0, datetime_complete=t0 + datetime.timedelta(minutes=minutes),
                                    params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-5, 1e-1)},
                                    user_attrs={}, system_attrs={},
                                    intermediate_values={1: 0.4} if state == TrialState.PRUNED else {}, trial_id=i))
    assert tune.search_seconds(study) == 50 * 60           # the failed trial's time is its retry's
    assert tune.search_seconds(study, workers=2) == 25 * 60
    assert tune.remaining_timeout(study, 3600, workers=2) == 3600 - 25 * 60
    assert tune.remaining_timeout(study, 1200, workers=1) == 1200 - 3000   # spent: no new trial
    assert tune.remaining_timeout(study, None) is None


def test_a_kept_search_goes_on_on_another_machine(synthetic_h5, tmp_path, capsys):
    """keep_search copies the journal (whole lines only); run_study with no journal of its own continues it."""
    first = tune.run_study(str(synthetic_h5), str(tmp_path / "a"), search(n_trials=3), TrainConfig(**TINY), kept=None)
    done = {t.number: (t.params, t.value) for t in first.get_trials(states=FINISHED)}
    assert len(done) == 3
    journal = tmp_path / "a" / tune.JOURNAL
    with journal.open("ab") as f:   # a line being written while it is kept
        f.write(b'{"op_code": 5, "worker_id": "x", "trial_id"')
    kept = tmp_path / "kept"
    ((name, what),) = tune.keep_search(journal, kept)
    assert name.startswith("search-") and what.endswith("(3 trials)")
    assert (kept / name / tune.JOURNAL).read_bytes() == journal.read_bytes().rsplit(b"\n", 1)[0] + b"\n"
    capsys.readouterr()
    again = tune.run_study(str(synthetic_h5), str(tmp_path / "b"), search(n_trials=3), TrainConfig(**TINY), kept=kept)
    assert "continuing the search kept in" in capsys.readouterr().out
    assert {t.number: (t.params, t.value) for t in again.get_trials(states=FINISHED)} == done   # none trained again
    other = tune.run_study(str(synthetic_h5), str(tmp_path / "c"), search(n_trials=0, epochs_per_trial=2),
                           TrainConfig(**TINY), kept=kept)   # other settings: not that search
    assert "continuing" not in capsys.readouterr().out and not other.get_trials(states=FINISHED)
    # the kept copy grows with the search that went on from it, and is never replaced by another one's
    assert tune.keep_search(journal, kept) == [(name, "already kept")]
    tune.run_study(str(synthetic_h5), str(tmp_path / "b"), search(n_trials=4), TrainConfig(**TINY), kept=kept)
    assert tune.keep_search(tmp_path / "b" / tune.JOURNAL, kept)[0][1].endswith("(4 trials)")
    assert (kept / name / tune.JOURNAL).read_bytes() == (tmp_path / "b" / tune.JOURNAL).read_bytes()
    with pytest.raises(UserError, match="holds trials that .* lacks"):
        tune.keep_search(journal, kept)   # the first machine's shorter journal
    tune.keep_search(journal, kept, overwrite=True)
    assert len(load(str(kept / name / tune.JOURNAL)).get_trials(states=FINISHED)) == 3
