"""Notebook 02's chain (fer_lib.chain): trainings keyed by recipe and data and reused, the single model,
the ensemble and the live model, each chosen on PublicTest without reading PrivateTest."""
import json
import shutil

import numpy as np
import pytest
import torch

from fer_lib import chain, data, ensemble, quantize, train
from fer_lib.chain import ModelsConfig, made_models, make_models, training_dir, training_key
from fer_lib.errors import UserError
from fer_lib.models import load_checkpoint, load_model
from fer_lib.synthetic import write_synthetic_h5
from fer_lib.train import TrainConfig, resolve_config


def recipe(**kw):
    return resolve_config(**{"model": "vgg_small", "epochs": 1, "batch_size": 32, "lr": 0.01, "progress": False,
                             "seed": 0, **kw})


def test_the_key_is_what_shapes_a_training_not_where_it_lies(synthetic_h5, tmp_path):
    key = training_key(recipe(), synthetic_h5)
    assert len(key) == 16 and int(key, 16) >= 0
    assert training_key(recipe(data="elsewhere.h5", out=str(tmp_path)), synthetic_h5) == key
    copy = tmp_path / "copy.h5"
    copy.write_bytes(synthetic_h5.read_bytes())
    assert training_key(recipe(), copy) == key   # the same faces under another name
    assert training_key(recipe(progress=True), synthetic_h5) == key
    # a field set to its default is the same recipe: a field added to TrainConfig later keeps old keys
    assert training_key(recipe(mixup=TrainConfig().mixup), synthetic_h5) == key
    changed = [recipe(seed=1), recipe(lr=0.02), recipe(crop=44), recipe(epochs=2)]
    assert len({training_key(c, synthetic_h5) for c in changed} | {key}) == 5
    other = write_synthetic_h5(tmp_path / "other.h5", n_per_class=(40, 10, 10), seed=5)
    assert training_key(recipe(), other) != key   # other data, another training
    named = training_dir(recipe(seed=3), synthetic_h5, tmp_path).name
    assert named == f"vgg_small-s3-{training_key(recipe(seed=3), synthetic_h5)}"


def test_models_config_checks_its_seeds():
    assert ModelsConfig(seeds=[1, 2]).seeds == [1, 2]
    for bad in ([-1], ["1"], 3):
        with pytest.raises(UserError, match="seeds"):
            ModelsConfig(seeds=bad)
    with pytest.raises(UserError):
        ModelsConfig(live="fp8")


@pytest.fixture(scope="module")
def made(synthetic_h5, tmp_path_factory):
    """The chain on the synthetic data, PrivateTest unreadable for all of it."""
    root = tmp_path_factory.mktemp("chain")
    real = data.load_split

    def no_test(path, split, *a, **kw):
        assert split != "test", "the chain read PrivateTest"
        return real(path, split, *a, **kw)
    with pytest.MonkeyPatch.context() as mp:
        for module in (chain, ensemble, quantize, train):
            mp.setattr(module, "load_split", no_test)
        out = make_models(recipe(), ModelsConfig(seeds=[1, 2], max_members=2, calibration_faces=64), synthetic_h5,
                          root / "trainings", root / "models", made_by={"notebook": "test"})
        copy = root / "another_run" / "fer2013.h5"   # another run's HDF5 of the same faces
        copy.parent.mkdir()
        copy.write_bytes(synthetic_h5.read_bytes())
        again = make_models(recipe(), ModelsConfig(seeds=[1, 2], max_members=2, calibration_faces=64), copy,
                            root / "trainings", root / "models2", made_by={"notebook": "test"})
    return out, again, root


def test_the_chain_makes_single_ensemble_and_live_models_chosen_on_public_test(made, synthetic_h5):
    out, _, root = made
    assert [r["seed"] for r in out["trainings"]] == [0, 1, 2]
    assert sorted(p.name for p in (root / "trainings").iterdir()) == sorted(r["key"] for r in out["trainings"])
    val = {r["key"]: r["best"]["val_acc"] for r in out["trainings"]}
    single = load_checkpoint(out["single"])
    assert single["made_by"]["training"] == max(val, key=val.get) and single["made_by"]["role"] == "single"
    assert "optimizer" not in single   # an export: weights and metadata only
    # the ensemble is the best pair on PublicTest, and predicts the mean of its members' probabilities
    best_pair = out["selection"][[len(r["members"]) for r in out["selection"]].index(2)]
    ens = load_model(out["ensemble"])
    x, _ = data.load_split(synthetic_h5, "val")
    members = [load_model(p) for p in best_pair["members"]]
    mean = np.mean([m.predict_proba(x) for m in members], 0)
    np.testing.assert_allclose(ens.predict_proba(x), mean, atol=5e-3)   # fp16-stored weights
    assert len(ens.meta["members"]) == 2
    # the live model is the single one in int8, calibrated on Training
    live = load_checkpoint(out["live"])
    assert live["quantization"]["calibration"]["split"] == "train" and live["made_by"]["role"] == "live"
    assert live["made_by"]["training"] == single["made_by"]["training"]
    listing = json.loads(out["listing"].read_text())
    assert {k: listing[k] for k in chain.MADE} == {"single": "single.pt", "ensemble": "ensemble.pt", "live": "live.pt"}
    assert [r for r, _ in made_models(out["listing"])] == ["single", "ensemble", "live"]


def test_a_second_run_reuses_every_training_and_makes_the_same_models(made):
    """The second run reads a copy of the HDF5 at another path, as a study's own 01 writes one."""
    out, again, _ = made
    assert [r["wall_s"] for r in again["trainings"]] == [0.0, 0.0, 0.0]   # nothing trained again
    assert [r["history"] for r in again["trainings"]] == [r["history"] for r in out["trainings"]]
    for role in ("single", "ensemble"):
        a, b = load_checkpoint(out[role])["state_dict"], load_checkpoint(again[role])["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stopped_training_continues_from_its_last_epoch(synthetic_h5, tmp_path, monkeypatch):
    cfg = recipe(epochs=2)
    save = train.save_atomic

    def stop_after_epoch_1(obj, path):
        save(obj, path)
        if path.name == "last.pt" and obj["epoch"] == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_atomic", stop_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        chain.train_all(cfg, ModelsConfig(), synthetic_h5, tmp_path)
    first = load_checkpoint(training_dir(cfg, synthetic_h5, tmp_path) / "last.pt")["history"]
    monkeypatch.setattr(train, "save_atomic", save)
    (result,) = chain.train_all(cfg, ModelsConfig(), synthetic_h5, tmp_path)
    assert [r["epoch"] for r in first] == [1] and [r["epoch"] for r in result["history"]] == [1, 2]
    assert result["history"][0] == first[0]   # epoch 1 kept, not retrained


def test_made_models_names_what_is_missing(tmp_path, tiny_checkpoint):
    assert made_models(tiny_checkpoint) == [("model", tiny_checkpoint)]
    listing = tmp_path / "made.json"
    listing.write_text(json.dumps({"single": "single.pt", "ensemble": None, "live": "live.pt"}))
    with pytest.raises(UserError, match=r"single.pt, .*live.pt, not found; rerun notebook 02"):
        made_models(listing)
    listing.write_text("{not json")
    with pytest.raises(UserError, match="not the list of models notebook 02 made"):
        made_models(listing)


def test_a_kept_training_is_reused_on_a_machine_without_its_run(made, synthetic_h5, tmp_path):
    """keep_trainings copies the finished trainings; a fresh machine's chain trains none of them again."""
    out, _, root = made
    trainings = shutil.copytree(root / "trainings", tmp_path / "trainings")
    save = train.save_atomic
    unfinished = training_dir(recipe(epochs=3), synthetic_h5, trainings)
    with pytest.MonkeyPatch.context() as mp:   # a training stopped after its first epoch is not kept
        def stop(obj, path):
            save(obj, path)
            if path.name == "last.pt":
                raise KeyboardInterrupt
        mp.setattr(train, "save_atomic", stop)
        with pytest.raises(KeyboardInterrupt):
            chain.train_all(recipe(epochs=3), ModelsConfig(), synthetic_h5, trainings, kept=())
    kept = tmp_path / "kept"
    done = dict(chain.keep_trainings(trainings, kept))
    assert done.pop(unfinished.name) == "unfinished (epoch 1 of 3)"
    assert set(done.values()) == {"kept"} and sorted(done) == sorted(r["key"] for r in out["trainings"])
    for r in out["trainings"]:
        folder = kept / r["key"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(chain.KEPT_FILES)
        ck = load_checkpoint(folder / "best.pt")
        assert "optimizer" not in ck and "train_state_dict" not in ck
        assert ck["config"]["out"] == r["key"] and "/" not in ck["config"]["data"]   # no machine's paths
        assert json.loads((folder / "history.json").read_text()) == r["history"]
    assert set(dict(chain.keep_trainings(trainings, kept)).values()) == {"already kept", "unfinished (epoch 1 of 3)"}
    fresh = tmp_path / "fresh_machine"
    again = make_models(recipe(), ModelsConfig(seeds=[1, 2], max_members=2, calibration_faces=64), synthetic_h5,
                        fresh / "trainings", fresh / "models", made_by={"notebook": "test"}, kept=(kept,))
    assert not (fresh / "trainings").exists()   # nothing trained
    spent = chain.training_compute(out["trainings"])   # but what it cost when it ran is still counted
    assert chain.training_compute(again["trainings"]) == spent and [r["wall_s"] for r in again["trainings"]] == [0.0] * 3
    assert sum(spent.values()) == pytest.approx(sum(h["time_s"] for r in out["trainings"] for h in r["history"]), abs=0.2)
    assert list(spent) == [out["trainings"][0]["history"][0]["ran_on"]]
    assert [r["history"] for r in again["trainings"]] == [r["history"] for r in out["trainings"]]
    assert [r["best"] for r in again["trainings"]] == [r["best"] for r in out["trainings"]]
    for role in ("single", "ensemble", "live"):
        a, b = load_checkpoint(out[role])["state_dict"], load_checkpoint(again[role])["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), role
    (kept / out["trainings"][0]["key"] / "history.json").write_text("{not json")
    with pytest.raises(UserError, match="history.json: unreadable"):
        chain.train_all(recipe(), ModelsConfig(), synthetic_h5, fresh / "trainings", kept=(kept,))
    with pytest.raises(UserError, match="no trainings there"):
        chain.keep_trainings(tmp_path / "nowhere", kept)
