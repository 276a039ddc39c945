"""The training engine: configuration, augmentation, a run that learns, resume, and the split protocol."""
import json
import math
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

import fer_lib.io
from fer_lib import train
from fer_lib.cli import main
from fer_lib.data import load_split
from fer_lib.environment import describe_machine, native_bf16
from fer_lib.evaluate import training_summary
from fer_lib.models import load_checkpoint, load_model
from fer_lib.synthetic import write_synthetic_h5
from fer_lib.train import (TrainConfig, augment_batch, build_optimizer, build_scheduler, export_checkpoint, fit,
                           pick_device,
                           resolve_config, stratified_subset)

# A narrow baseline (8-16-32 channels): a tiny epoch of the synthetic set takes about a second.
TINY = {"model": "baseline", "model_args": {"widths": [8, 16, 32], "hidden": 32}, "epochs": 1,
        "batch_size": 32, "progress": False, "seed": 0}


def tiny_config(h5, out, **kw) -> TrainConfig:
    return resolve_config(**{**TINY, "data": str(h5), "out": str(out), **kw})


def strip_time(history):
    """A history's results: without each epoch's time and the machine it ran on."""
    return [{k: v for k, v in row.items() if k not in ("time_s", "ran_on")} for row in history]


# ----------------------------------------------------------------------------- configuration

def test_resolve_config_precedence(tmp_path):
    assert resolve_config() == TrainConfig()
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"lr": 0.1, "epochs": 5, "optimizer": "adamw"}))
    cfg = resolve_config(str(f), epochs=7, lr=None)      # None = flag not given: the file's value stays
    assert (cfg.lr, cfg.epochs, cfg.optimizer) == (0.1, 7, "adamw")
    assert cfg.batch_size == TrainConfig.batch_size      # untouched fields keep the defaults
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.2\nscheduler: step\n")
    assert (resolve_config(str(y)).lr, resolve_config(str(y)).scheduler) == (0.2, "step")


def test_resolve_config_reads_fer_tune_best_params(tmp_path):
    f = tmp_path / "best_params.json"
    f.write_text(json.dumps({"best_value": 0.61, "train_config": {"lr": 0.03, "activation": "elu"}}))
    cfg = resolve_config(str(f), activation="silu")
    assert (cfg.lr, cfg.activation) == (0.03, "silu")


def test_resolve_config_rejects_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['learning_rate'\]"):
        resolve_config(learning_rate=0.1)
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(ValueError, match="epochz"):
        resolve_config(str(f))


def test_pick_device_on_cpu():
    assert pick_device(TrainConfig(device="cpu", precision="fp32")) == (torch.device("cpu"), None)
    assert pick_device(TrainConfig(device="cpu", precision="bf16"))[1] == torch.bfloat16
    # auto: bf16 only where the CPU has it in hardware (emulated it is 2.5-10x slower than fp32)
    native = native_bf16()
    assert pick_device(TrainConfig(device="cpu"))[1] == (torch.bfloat16 if native else None)


def test_bf16_counts_only_in_hardware(monkeypatch):
    """oneDNN says yes to bare AVX-512 (Ice Lake), where it emulates bf16 at 2.5x the time of fp32."""
    from fer_lib import environment
    ice_lake = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    for flags, native in ((ice_lake, False), (ice_lake | {"avx512_bf16"}, True), ({"avx2", "amx_bf16"}, True)):
        monkeypatch.setattr(environment, "cpu_flags", lambda flags=flags: ("a CPU", flags))
        assert environment.native_bf16() is native
        assert pick_device(TrainConfig(device="cpu"))[1] == (torch.bfloat16 if native else None)
        assert environment.describe_environment()["cpu_bf16"] is native


# ----------------------------------------------------------------------------- data and augmentation

def test_augment_batch_shapes_and_identity():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 48, 48)
    assert augment_batch(x, 1.0, True, 0.25).shape == x.shape
    assert torch.equal(augment_batch(x, 0.0, False, 0.25), x)   # erase is scaled by strength: off too
    assert not torch.allclose(augment_batch(x, 1.0, False, 0.0), x)


def test_augment_batch_flip_only_mirrors():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 48, 48)
    y = augment_batch(x, 0.0, True, 0.0)
    same = [torch.allclose(a, b, atol=1e-5) for a, b in zip(y, x)]
    mirrored = [torch.allclose(a, b.flip(-1), atol=1e-5) for a, b in zip(y, x)]
    assert all(s != m for s, m in zip(same, mirrored))   # each image is exactly one of the two
    assert 0 < sum(mirrored) < 16


def test_augment_batch_erases_a_box():
    torch.manual_seed(0)
    y = augment_batch(torch.ones(32, 1, 48, 48), 1.0, True, 1.0)   # affine keeps a constant image constant
    erased = (y == 0).flatten(1).float().mean(1)                     # fraction of each face erased
    assert ((erased >= 0.005) & (erased <= 0.18)).all()              # a box of 10-40% of each side
    assert torch.allclose(y[y != 0], torch.ones(()))


def test_stratified_subset():
    labels = torch.tensor([0] * 100 + [1] * 10 + [2] * 50 + [3] * 3)
    keep = stratified_subset(labels, 0.1, seed=0)
    assert torch.bincount(labels[keep]).tolist() == [10, 1, 5, 1]    # every class keeps at least one
    assert torch.equal(keep, keep.sort().values) and len(keep.unique()) == len(keep)
    assert torch.equal(keep, stratified_subset(labels, 0.1, seed=0))
    assert not torch.equal(keep, stratified_subset(labels, 0.1, seed=1))
    assert torch.equal(stratified_subset(labels, 1.0, seed=0), torch.arange(len(labels)))


# ----------------------------------------------------------------------------- a run that learns

@pytest.fixture(scope="module")
def learnable_h5(tmp_path_factory):
    """Synthetic faces, 200/30/0 per class: enough for a tiny CNN to learn them in seconds."""
    return write_synthetic_h5(tmp_path_factory.mktemp("learn") / "syn.h5", n_per_class=(200, 30, 1), seed=0)


def test_short_run_beats_chance(learnable_h5, tmp_path):
    # measured over seeds 0-2: val acc 0.91-0.96 after 4 epochs; chance is 1/7 = 0.14
    result = fit(tiny_config(learnable_h5, tmp_path, epochs=4, lr=0.05, augment=0.0))
    h = result["history"]
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    assert result["best"]["val_acc"] == max(r["val_acc"] for r in h) > 0.6
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == result["best"]["epoch"]
    assert json.loads((tmp_path / "history.json").read_text()) == h
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 4


def test_selection_and_early_stop_follow_val(synthetic_h5, tmp_path, monkeypatch):
    real = train.run_epoch
    val = {1: 0.3, 2: 0.5, 3: 0.4, 4: 0.45, 5: 0.9}

    def scripted(s, epoch):
        return {**real(s, epoch), "val_acc": val[epoch]}
    monkeypatch.setattr(train, "run_epoch", scripted)
    result = fit(tiny_config(synthetic_h5, tmp_path, epochs=5, patience=2))
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3, 4]   # no gain in 3 and 4: stop
    assert result["best"]["epoch"] == 2 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 4


# ----------------------------------------------------------------------------- interruption and resume

def interrupt_at(monkeypatch, stop_epoch):
    real = train.run_epoch

    def run_epoch(s, epoch):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return real(s, epoch)
    monkeypatch.setattr(train, "run_epoch", run_epoch)


def test_resume_continues_at_the_next_epoch(synthetic_h5, tmp_path, monkeypatch):
    cfg = tiny_config(synthetic_h5, tmp_path / "resumed", epochs=3)
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg)
    first = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert first["epoch"] == 2 and len(first["history"]) == 2
    resumed = fit(cfg, resume=True)["history"]
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert resumed[:2] == first["history"]
    # model, optimizer, scheduler and RNG state all come back: epoch 3 is the uninterrupted run's epoch 3
    straight = fit(tiny_config(synthetic_h5, tmp_path / "straight", epochs=3))["history"]
    for a, b in zip(strip_time(resumed), strip_time(straight), strict=True):
        assert a == pytest.approx(b, rel=1e-6)


def test_a_run_resumed_on_another_machine_says_where_each_epoch_ran(synthetic_h5, tmp_path, monkeypatch):
    """Its times mix two speeds (AVX2 fp32, AMX bf16): every history row names its machine; rows of a
    run made before they did are the machine its checkpoint recorded."""
    cfg = tiny_config(synthetic_h5, tmp_path, epochs=3)
    with monkeypatch.context() as m:
        interrupt_at(m, 3)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg)
    ck = load_checkpoint(tmp_path / "last.pt")
    here = describe_machine(ck["machine"])
    assert here and [r["ran_on"] for r in ck["history"]] == [here, here]
    ck["history"][0].pop("ran_on")  # as a run made before 2026-12 wrote it
    train.save_atomic(ck, tmp_path / "last.pt")
    real = train.describe_environment
    monkeypatch.setattr(train, "describe_environment", lambda: {**real(), "cpu": "Another CPU"})
    history = fit(cfg, resume=True)["history"]
    there = here.replace(ck["machine"]["cpu"], "Another CPU")
    assert [r["ran_on"] for r in history] == [here, here, there]
    assert training_summary(history)["ran_on"] == [here, there]
    assert "ran_on" not in training_summary([{"epoch": 1, "time_s": 1.0}])  # an old run's summary is as it was


def test_interrupted_run_keeps_its_checkpoints(synthetic_h5, tmp_path, monkeypatch):
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(synthetic_h5, tmp_path, epochs=3))
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(tmp_path / name)["epoch"] == 1
        assert load_model(tmp_path / name).predict_proba(torch.zeros(2, 48, 48, dtype=torch.uint8)).shape == (2, 7)
    assert len(json.loads((tmp_path / "history.json").read_text())) == 1
    assert not list(tmp_path.glob("*.partial*"))


def test_a_crash_while_saving_keeps_the_previous_checkpoint(synthetic_h5, tmp_path, monkeypatch):
    fit(tiny_config(synthetic_h5, tmp_path, epochs=1))
    before = (tmp_path / "last.pt").read_bytes()

    def dies_halfway(self, data):  # killed while the checkpoint's bytes go to disk
        open(self, "wb").write(bytes(data[:len(data) // 2]))
        raise KeyboardInterrupt
    monkeypatch.setattr(fer_lib.io.Path, "write_bytes", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(synthetic_h5, tmp_path, epochs=1, seed=1), overwrite=True)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not list(tmp_path.glob("*.partial*"))


def test_export_checkpoint_drops_training_state(tiny_checkpoint, tmp_path):
    dst = export_checkpoint(tiny_checkpoint, tmp_path / "sub" / "model.pt")
    full, small = load_checkpoint(tiny_checkpoint), load_checkpoint(dst)
    assert {"optimizer", "scheduler", "rng"} <= set(full) and not {"optimizer", "scheduler", "rng"} & set(small)
    assert set(full) - set(small) == {"optimizer", "scheduler", "rng"}
    assert dst.stat().st_size < tiny_checkpoint.stat().st_size
    faces = torch.randint(0, 256, (4, 48, 48), dtype=torch.uint8)
    assert (load_model(dst).predict_proba(faces) == load_model(tiny_checkpoint).predict_proba(faces)).all()


# ----------------------------------------------------------------------------- the split protocol

def test_training_runs_without_the_test_split(synthetic_h5, tmp_path):
    h5 = shutil.copy(synthetic_h5, tmp_path / "no_test.h5")
    with h5py.File(h5, "a") as f:
        for name in ("images", "labels", "names"):   # every PrivateTest array; the group keeps its counts
            del f["test"][name]
    result = fit(tiny_config(h5, tmp_path / "run", epochs=1))
    assert len(result["history"]) == 1


def test_training_never_requests_the_test_split(synthetic_h5, tmp_path, monkeypatch):
    splits, arrays = [], []
    real_load, real_getitem = train.load_split, h5py.Dataset.__getitem__

    def load_split(path, split, *a, **kw):
        splits.append(split)
        return real_load(path, split, *a, **kw)

    def getitem(self, key):
        arrays.append(self.name)
        return real_getitem(self, key)
    monkeypatch.setattr(train, "load_split", load_split)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", getitem)
    fit(tiny_config(synthetic_h5, tmp_path, epochs=1))
    assert sorted(set(splits)) == ["train", "val"]
    assert {"/train/images", "/val/images"} <= set(arrays)
    assert not [a for a in arrays if a.startswith("/test")]


# ----------------------------------------------------------------------------- CLI, optimizers, schedulers

def test_fer_train_cli(synthetic_h5, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**TINY, "epochs": 3, "lr": 0.02}))
    out = tmp_path / "run"
    assert main(["train", "--data", str(synthetic_h5), "--out", str(out), "--config", str(config),
                 "--epochs", "1", "--activation", "leaky_relu", "--flip", "false",
                 "--export", str(tmp_path / "model.pt")]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["epochs"], cfg["lr"], cfg["activation"], cfg["flip"]) == (1, 0.02, "leaky_relu", False)
    assert cfg["model_args"] == TINY["model_args"]
    assert "best PublicTest acc" in capsys.readouterr().out
    assert "optimizer" not in load_checkpoint(tmp_path / "model.pt")
    assert load_model(tmp_path / "model.pt").meta["config"]["activation"] == "leaky_relu"


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_every_optimizer_trains(synthetic_h5, tmp_path, name, cls):
    cfg = tiny_config(synthetic_h5, tmp_path, optimizer=name, lr=0.01 if name == "sgd" else 1e-3)
    assert type(build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])) is cls
    row = fit(cfg)["history"][0]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])
    assert load_checkpoint(tmp_path / "last.pt")["optimizer"]["state"]   # the optimizer took steps


# lr in the history row of epoch 2 (per-epoch schedulers step after the row), for lr=0.01 over 2 epochs
EXPECTED_LR_AT_EPOCH_2 = {"none": 0.01, "plateau": 0.01, "step": 0.005, "cosine": 0.005, "onecycle": None}


@pytest.mark.parametrize("scheduler", sorted(EXPECTED_LR_AT_EPOCH_2))
def test_every_scheduler_trains(synthetic_h5, tmp_path, scheduler):
    cfg = tiny_config(synthetic_h5, tmp_path, scheduler=scheduler, lr=0.01, epochs=2, step_size=1, gamma=0.5)
    h = fit(cfg)["history"]
    assert all(math.isfinite(r["train_loss"]) for r in h)
    if scheduler == "onecycle":   # warm up, then anneal to ~0 (the row holds the lr after the last step)
        assert h[0]["lr"] < 0.01 and h[1]["lr"] < 0.01 / 25
    else:
        assert h[0]["lr"] == pytest.approx(0.01)
        assert h[1]["lr"] == pytest.approx(EXPECTED_LR_AT_EPOCH_2[scheduler], rel=1e-6)


def test_step_fraction_is_the_same_schedule_at_any_budget():
    """StepLR by share of the run: a 4-epoch search trial and the 16-epoch final run decay at the same
    points of their schedules (a quarter, a half, three quarters); step_size counts epochs."""
    def lrs(**kw):
        cfg = TrainConfig(scheduler="step", lr=1.0, gamma=0.5, **kw)
        sched = build_scheduler(cfg, build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))]), steps_per_epoch=1)
        out = []
        for _ in range(cfg.epochs):
            out.append(sched.get_last_lr()[0])
            sched.step()
        return out
    assert lrs(epochs=4, step_fraction=0.25) == [1, 0.5, 0.25, 0.125]
    assert lrs(epochs=16, step_fraction=0.25) == [1] * 4 + [0.5] * 4 + [0.25] * 4 + [0.125] * 4
    assert lrs(epochs=4, step_size=3) == [1, 1, 1, 0.5]


def test_plot_history():
    from fer_lib.plots import plot_history
    history = [{"epoch": e, "train_loss": 2 - e / 4, "train_acc": e / 5, "val_loss": 1.9 - e / 5,
                "val_acc": a, "lr": 0.01} for e, a in ((1, 0.3), (2, 0.5), (3, 0.4))]
    loss, acc = plot_history(history).axes
    assert [list(line.get_xdata()) for line in loss.lines] == [[1, 2, 3], [1, 2, 3]]
    assert list(acc.lines[1].get_ydata()) == [0.3, 0.5, 0.4]
    assert list(acc.lines[2].get_xdata()) == [2, 2]   # the best val epoch, marked
    with pytest.raises(ValueError, match="empty history"):
        plot_history([])


def test_unknown_optimizer_or_scheduler_raises(synthetic_h5, tmp_path):
    with pytest.raises(ValueError, match="--optimizer lbfgs .*one of sgd, adam, adamw, rmsprop"):
        fit(tiny_config(synthetic_h5, tmp_path, optimizer="lbfgs"))
    with pytest.raises(ValueError, match="--scheduler warmup .*one of onecycle"):
        fit(tiny_config(synthetic_h5, tmp_path, scheduler="warmup"))
    assert not list(tmp_path.iterdir())  # refused before any work


# ----------------------------------------------------------------------------- mixup, EMA, crops, distillation

@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_sum_to_one_and_match_lambda(mixup, cutmix):
    torch.manual_seed(0)
    np.random.seed(0)
    x, y = torch.randn(8, 1, 48, 48), torch.arange(8) % 7
    for _ in range(5):
        xm, t, lam, y2 = train.mix_batch(x, y, 7, mixup, cutmix, smoothing=0.1)
        torch.testing.assert_close(t.sum(1), torch.ones(8))
        assert torch.equal(y2, y.flip(0)) and 0 <= lam <= 1
        expected = lam * train.smooth_one_hot(y, 7, 0.1) + (1 - lam) * train.smooth_one_hot(y2, 7, 0.1)
        torch.testing.assert_close(t, expected)
        if cutmix and not mixup:  # every pixel comes from one of the two images, lam = own share
            own = (xm == x).float().mean().item()
            assert own == pytest.approx(lam, abs=1e-6)


def test_mix_batch_at_alpha_zero_is_the_plain_labels():
    x, y = torch.randn(6, 1, 48, 48), torch.tensor([0, 1, 2, 3, 4, 6])
    xm, t, lam, _ = train.mix_batch(x, y, 7, 0.0, 0.0)
    assert xm is x and lam == 1.0
    assert torch.equal(t, torch.nn.functional.one_hot(y, 7).float())
    # and the loss on those targets is the plain cross-entropy
    logits = torch.randn(6, 7)
    torch.testing.assert_close(torch.nn.functional.cross_entropy(logits, t),
                               torch.nn.functional.cross_entropy(logits, y))


def test_random_crop_takes_windows_of_the_image():
    x = torch.arange(2 * 48 * 48, dtype=torch.float32).view(2, 1, 48, 48)
    c = train.random_crop(x, 40)
    assert c.shape == (2, 1, 40, 40)
    for b in range(2):
        i, j = divmod(int(c[b, 0, 0, 0].item()) - b * 48 * 48, 48)
        assert torch.equal(c[b, 0], x[b, 0, i:i + 40, j:j + 40])


def test_ema_at_decay_zero_equals_the_weights_after_a_step(synthetic_h5, tmp_path):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    s = train.setup(tiny_config(synthetic_h5, tmp_path, ema_decay=0.5))
    ema = AveragedModel(s.model, multi_avg_fn=get_ema_multi_avg_fn(0.0), use_buffers=True)
    images, labels = s.train
    for _ in range(2):  # the first update copies; the second is a real decay-0 step
        train.train_one_epoch(s.model, s.optimizer, s.scheduler, images[:64], labels[:64], s.cfg, s.mean,
                              s.std, s.device, None, ema=ema)
        for a, b in zip(ema.module.state_dict().values(), s.model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ema_run_checkpoints_and_scores_the_averaged_weights(synthetic_h5, tmp_path):
    result = fit(tiny_config(synthetic_h5, tmp_path, epochs=2, ema_decay=0.9))
    ck = load_checkpoint(tmp_path / "last.pt")
    assert "raw_val_acc" in result["history"][-1]
    assert any(not torch.equal(ck["state_dict"][k], ck["train_state_dict"][k]) for k in ck["state_dict"])
    x, y = load_split(synthetic_h5, "val")
    acc = (load_model(tmp_path / "last.pt").predict(x) == y).mean()
    assert acc == pytest.approx(result["history"][-1]["val_acc"], abs=1e-9)  # what is scored is what is saved
    small = export_checkpoint(tmp_path / "last.pt", tmp_path / "small.pt")
    assert "train_state_dict" not in load_checkpoint(small)


def test_ema_run_resumes_its_average(synthetic_h5, tmp_path, monkeypatch):
    cfg = tiny_config(synthetic_h5, tmp_path / "b", epochs=2, ema_decay=0.9, mixup=0.2, cutmix=1.0, crop=40)
    with monkeypatch.context() as m:
        interrupt_at(m, 2)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg)
    resumed = fit(cfg, resume=True)["history"]
    straight = fit(tiny_config(synthetic_h5, tmp_path / "a", epochs=2, ema_decay=0.9, mixup=0.2, cutmix=1.0,
                               crop=40))["history"]
    for a, b in zip(strip_time(resumed), strip_time(straight), strict=True):
        assert a == pytest.approx(b, rel=1e-6)


def test_crop_training_is_scored_the_same_everywhere(synthetic_h5, tmp_path):
    """fer train's PublicTest score, predict_proba and fer evaluate agree for a crop-trained model,
    and ten-crop feeds the model windows of its own side."""
    from fer_lib.evaluate import evaluate_checkpoint, predict_logits, tta_views
    result = fit(tiny_config(synthetic_h5, tmp_path, epochs=1, crop=40))
    clf = load_model(tmp_path / "best.pt")
    assert clf.input_size == 40
    x, y = load_split(synthetic_h5, "val")
    assert (clf.predict(x) == y).mean() == pytest.approx(result["history"][-1]["val_acc"], abs=1e-9)
    m = evaluate_checkpoint(tmp_path / "best.pt", synthetic_h5, tmp_path / "rep", tta="tencrop", n_bootstrap=10,
                            figures=False, progress=False)
    assert m["val"]["plain"]["accuracy"] == pytest.approx(result["history"][-1]["val_acc"], abs=1e-9)
    assert tta_views(x[:3], "tencrop", crop=40, resize=False).shape == (10, 3, 40, 40)
    ten = predict_logits(clf, x[:5], "tencrop")
    np.testing.assert_allclose(ten[4], clf.predict_logits(x[:5]).numpy(), atol=1e-5)  # view 4 = the centre


def test_distillation_step_reduces_kl_to_the_teacher(synthetic_h5, tiny_checkpoint, tmp_path):
    s = train.setup(tiny_config(synthetic_h5, tmp_path, teacher=str(tiny_checkpoint), kd_alpha=1.0, lr=0.01,
                                augment=0.0, flip=False, erase=0.0))
    images, labels = s.train
    x = train._to_input(images[:64], s.mean, s.std, s.device)

    def kl():
        s.model.eval()
        with torch.no_grad():
            return train.distill_loss(s.model(x), s.teacher(x), s.cfg.kd_temperature).item()
    before = kl()
    for _ in range(3):
        train.train_one_epoch(s.model, s.optimizer, s.scheduler, images[:64], labels[:64], s.cfg, s.mean, s.std,
                              s.device, None, teacher=s.teacher)
    assert kl() < before


def test_cached_teacher_targets_are_its_flip_averaged_probabilities(synthetic_h5, tiny_checkpoint, tmp_path):
    s = train.setup(tiny_config(synthetic_h5, tmp_path, teacher=str(tiny_checkpoint), kd_cache=True))
    assert s.teacher is None  # no teacher pass per batch
    images, _ = s.train
    t = load_model(tiny_checkpoint)
    faces = images[:16].numpy()
    expected = (t.predict_proba(faces) + t.predict_proba(faces[..., ::-1])) / 2
    np.testing.assert_allclose(s.teacher_targets[:16].exp().numpy(), expected, atol=1e-5)
    assert s.teacher_targets.shape == (len(images), 7)


def test_a_cached_teacher_step_reduces_kl_to_its_targets(synthetic_h5, tiny_checkpoint, tmp_path):
    s = train.setup(tiny_config(synthetic_h5, tmp_path, teacher=str(tiny_checkpoint), kd_cache=True, kd_alpha=1.0,
                                lr=0.01, augment=0.0, flip=False, erase=0.0, mixup=0.4))
    images, labels = s.train
    x = train._to_input(images[:64], s.mean, s.std, s.device)

    def kl():
        s.model.eval()
        with torch.no_grad():
            return train.distill_loss(s.model(x), s.teacher_targets[:64], s.cfg.kd_temperature).item()
    before = kl()
    for _ in range(3):
        train.train_one_epoch(s.model, s.optimizer, s.scheduler, images[:64], labels[:64], s.cfg, s.mean, s.std,
                              s.device, None, teacher_targets=s.teacher_targets[:64])
    assert kl() < before


def test_init_starts_from_a_checkpoint_and_refuses_another_model(synthetic_h5, tiny_checkpoint, tmp_path):
    same = {"model": "vgg_small", "model_args": {}}
    s = train.setup(tiny_config(synthetic_h5, tmp_path / "a", init=str(tiny_checkpoint), **same))
    ref = load_model(tiny_checkpoint).model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in s.model.state_dict().items())
    fresh = train.setup(tiny_config(synthetic_h5, tmp_path / "b", **same)).model.state_dict()
    assert not all(torch.equal(v, fresh[k]) for k, v in s.model.state_dict().items())
    with pytest.raises(ValueError, match="--init .*does not fit baseline"):
        train.setup(tiny_config(synthetic_h5, tmp_path / "c", init=str(tiny_checkpoint)))


def test_new_options_never_read_the_test_split(synthetic_h5, tiny_checkpoint, tmp_path):
    """Mixing, EMA, crops and a teacher: the test split may even be missing."""
    h5 = shutil.copy(synthetic_h5, tmp_path / "no_test.h5")
    with h5py.File(h5, "a") as f:
        for name in ("images", "labels", "names"):
            del f["test"][name]
    result = fit(tiny_config(h5, tmp_path / "run", epochs=1, crop=40, mixup=0.2, cutmix=1.0, ema_decay=0.9,
                             teacher=str(tiny_checkpoint)))
    assert len(result["history"]) == 1
    cached = fit(tiny_config(h5, tmp_path / "cached", epochs=1, teacher=str(tiny_checkpoint), kd_cache=True,
                             init=str(tiny_checkpoint), model="vgg_small", model_args={}))
    assert len(cached["history"]) == 1


# ----------------------------------------------------------------------------- run folders are never replaced silently

def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_finished_run_is_never_overwritten(synthetic_h5, tmp_path):
    fit(tiny_config(synthetic_h5, tmp_path, epochs=1))
    before = snapshot(tmp_path)
    with pytest.raises(train.UserError, match=r"already holds a run.*--resume.*--out.*--overwrite"):
        fit(tiny_config(synthetic_h5, tmp_path, epochs=1, seed=3))
    assert snapshot(tmp_path) == before


def test_resume_refuses_another_configuration_before_writing(synthetic_h5, tmp_path):
    fit(tiny_config(synthetic_h5, tmp_path, epochs=1))
    before = snapshot(tmp_path)
    with pytest.raises(train.UserError, match=r"another configuration \(epochs: run 1, now 3"):
        fit(tiny_config(synthetic_h5, tmp_path, epochs=3), resume=True)
    with pytest.raises(train.UserError, match=r"another configuration \(lr:"):
        fit(tiny_config(synthetic_h5, tmp_path, epochs=1, lr=0.5), resume="auto")
    assert snapshot(tmp_path) == before


def test_resume_without_a_checkpoint_is_refused(synthetic_h5, tmp_path):
    with pytest.raises(train.UserError, match="nothing to resume.*no last.pt"):
        fit(tiny_config(synthetic_h5, tmp_path / "none", epochs=1), resume=True)
    assert not (tmp_path / "none").exists()


def test_auto_resume_starts_continues_and_returns_a_finished_run(synthetic_h5, tmp_path, monkeypatch):
    cfg = tiny_config(synthetic_h5, tmp_path, epochs=2)
    with monkeypatch.context() as m:
        interrupt_at(m, 2)
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, resume="auto")
    assert [r["epoch"] for r in fit(cfg, resume="auto")["history"]] == [1, 2]
    before = snapshot(tmp_path)
    again = fit(cfg, resume="auto")  # finished: nothing trained, nothing written
    assert [r["epoch"] for r in again["history"]] == [1, 2] and snapshot(tmp_path) == before


def test_stale_partials_of_dead_writers_are_cleaned(synthetic_h5, tmp_path):
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid no longer runs
    stale = tmp_path / f"last.{dead.pid}-0123abcd.partial.pt"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f"best.{os.getpid()}-0123abcd.partial.pt"
    live.write_bytes(b"y")
    fit(tiny_config(synthetic_h5, tmp_path, epochs=1))
    assert not stale.exists() and live.exists()


def test_a_run_that_fails_before_its_first_epoch_leaves_no_folder(synthetic_h5, tmp_path):
    out = tmp_path / "tiny"
    with pytest.raises(train.UserError, match="--batch-size 1 .*at least 2 .batch-norm needs 2"):
        fit(tiny_config(synthetic_h5, out, batch_size=1))
    assert not out.exists()
    with pytest.raises(ValueError, match="nope.pt"):   # a failure inside setup
        fit(tiny_config(synthetic_h5, out, init=str(tmp_path / "nope.pt")))
    assert not out.exists()


def test_ctrl_c_in_fer_train_is_one_line_and_status_130(synthetic_h5, tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, 2)
    argv = ["train", "--data", str(synthetic_h5), "--out", str(tmp_path), "--model", "baseline",
            "--model-args", '{"widths": [8, 16, 32], "hidden": 32}', "--epochs", "3", "--progress", "false"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keeps epoch 1" in err[0] and f"fer train --out {tmp_path} --resume" in err[0]
    monkeypatch.undo()
    assert main(["train", "--out", str(tmp_path), "--resume"]) == 0   # its own config.json
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3


def test_the_plan_line_measures_speed_without_changing_the_run(synthetic_h5, tmp_path, capsys):
    """Before training, a run says what it will cost here; measuring that touches neither weights nor RNG."""
    quiet = fit(tiny_config(synthetic_h5, tmp_path / "quiet", epochs=2, drop_rate=0.5))
    assert "plan:" not in capsys.readouterr().out
    told = fit(tiny_config(synthetic_h5, tmp_path / "told", epochs=2, drop_rate=0.5, progress=True))
    plan = [line for line in capsys.readouterr().out.splitlines() if line.startswith("plan:")]
    assert len(plan) == 1 and "2 epochs of baseline on 280 Training faces" in plan[0]
    speed = float(plan[0].split("measured ")[1].split(" faces/s")[0])
    assert speed > 0 and " s an epoch" in plan[0] and "resumes" in plan[0]
    assert strip_time(told["history"]) == strip_time(quiet["history"])
