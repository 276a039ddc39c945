"""The model registry, parameter and MAC counts, checkpoints and the Classifier."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_lib import models
from fer_lib.models import (ACTIVATIONS, Classifier, count_macs, count_params, count_train_flops, create_model,
                            list_models, load_checkpoint, load_model, model_from_checkpoint, register_model,
                            summarize_models)
from fer_lib.train import checkpoint, resolve_config, run_epoch, save_atomic, setup

# Measured once with create_model(name) and written down: a change to an architecture must be deliberate.
PARAMS = {"baseline": 2_731_719, "improved": 1_835_751, "vgg": 7_050_055, "vgg_small": 1_764_775,
          "resnet": 11_154_663, "resnet_small": 2_792_055}
MACS = {"baseline": 88_622_848, "improved": 43_396_608, "vgg": 470_830_592, "vgg_small": 118_040_320,
        "resnet": 302_657_024, "resnet_small": 75_831_040}


def test_registry_holds_the_study_models():
    assert list_models() == sorted(PARAMS)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_forward_shape_params_and_no_nan(name, activation):
    torch.manual_seed(0)
    model = create_model(name, activation=activation)
    assert count_params(model) == PARAMS[name]  # activations have no parameters
    for mode in (model.train, model.eval):      # BN with batch statistics, then running statistics
        mode()
        out = model(torch.randn(2, 1, 48, 48))
        assert out.shape == (2, 7)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_macs(name):
    assert count_macs(create_model(name)) == MACS[name]


def test_a_training_step_costs_about_six_flops_per_multiply_add_and_leaves_the_model_alone():
    """Forward 2 FLOPs per MAC, backward twice that (input and weight gradients); the first conv needs no
    input gradient, batch-norm and activations are not counted: so a little under 6x."""
    model = create_model("baseline")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flops = count_train_flops(model)
    assert 5.5 * count_macs(model) < flops <= 6 * count_macs(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # batch-norm statistics too
    assert count_train_flops(create_model("baseline", img_size=40)) < flops


def test_baseline_params_and_macs_by_hand():
    # conv 3x3 (no bias, BN follows) at 48, 24, 12 px; max-pool to 6x6; dense 256 (no bias) + BN1d; dense 7
    convs = [(1, 64, 48), (64, 128, 24), (128, 256, 12)]
    conv_params = sum(9 * cin * cout + 2 * cout for cin, cout, _ in convs)   # weights + BN gamma/beta
    head_params = 256 * 6 * 6 * 256 + 2 * 256 + 256 * 7 + 7
    assert count_params(create_model("baseline")) == conv_params + head_params
    conv_macs = sum(side * side * cout * 9 * cin for cin, cout, side in convs)
    assert count_macs(create_model("baseline")) == conv_macs + 256 * 6 * 6 * 256 + 256 * 7 == 88_622_848


def test_summarize_models():
    rows = summarize_models()
    assert [r["model"] for r in rows] == list_models()
    assert {r["model"]: r["params"] for r in rows} == PARAMS
    assert {r["model"]: r["macs"] for r in rows} == MACS
    assert all(r["description"] for r in rows)


def test_create_model_drops_none_and_passes_kwargs():
    default = create_model("vgg_small")
    assert default.head[-2].p == 0.4                                     # the model's own dropout
    assert create_model("vgg_small", drop_rate=None).head[-2].p == 0.4   # None = "not given"
    assert create_model("vgg_small", drop_rate=0.2).head[-2].p == 0.2
    assert isinstance(create_model("baseline", activation="elu").features[2], torch.nn.ELU)
    narrow = create_model("baseline", widths=(8, 16, 32), hidden=32)
    assert narrow(torch.zeros(2, 1, 48, 48)).shape == (2, 7)
    assert count_params(narrow) < PARAMS["baseline"] // 10


@pytest.mark.parametrize("name", ["vgg_small", "resnet_small"])
def test_width_mult_scales_every_layer(name):
    """width_mult 0.5 halves each width (kept a multiple of 8): about a quarter of the compute; 1 is the model."""
    assert count_macs(create_model(name, width_mult=1.0)) == MACS[name]
    half = create_model(name, width_mult=0.5)
    widths = [m.out_channels for m in half.modules() if isinstance(m, torch.nn.Conv2d)]
    full = [m.out_channels for m in create_model(name).modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [max(8, w // 2) for w in full]
    assert 0.2 < count_macs(half) / MACS[name] < 0.3
    assert half(torch.zeros(2, 1, 48, 48)).shape == (2, 7)


def test_bad_names_raise():
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*baseline"):
        create_model("resnet50")
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        create_model("baseline", activation="gelu")


def test_register_model_warns_on_duplicate(monkeypatch):
    monkeypatch.setattr(models, "_MODELS", dict(models._MODELS))   # leave the real registry alone

    def baseline(**kw):
        return torch.nn.Linear(2304, 7)
    with pytest.warns(UserWarning, match="'baseline' registered twice"):
        register_model(baseline)
    assert create_model("baseline").__class__ is torch.nn.Linear

    def brand_new(**kw):
        return torch.nn.Identity()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a new name registers silently
        register_model(brand_new)
    assert "brand_new" in list_models()


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_is_plain_self_describing_data(tiny_checkpoint):
    ck = load_checkpoint(tiny_checkpoint)   # weights_only=True: plain data only
    for key in ("version", "model_name", "model_args", "state_dict", "epoch", "metric", "config",
                "mean", "std", "class_names", "history"):
        assert key in ck, key
    assert ck["model_name"] == "vgg_small"
    assert ck["class_names"] == ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
    assert ck["config"]["epochs"] == 2 and ck["config"]["seed"] == 0
    assert 0 < ck["std"] < 1 and 0 < ck["mean"] < 1


def test_checkpoint_round_trip_gives_identical_predictions(synthetic_h5, tmp_path):
    # train one tiny epoch with the engine, save the checkpoint as fit() does, and load it back
    cfg = resolve_config(data=str(synthetic_h5), out=str(tmp_path), model="baseline", epochs=2, batch_size=32,
                         model_args={"widths": [8, 16, 32], "hidden": 32}, activation="elu", progress=False)
    s = setup(cfg)
    run_epoch(s, 1)   # BN running statistics and weights move away from their initial values
    save_atomic(checkpoint(s, 1, [run_epoch(s, 1)], {"val_acc": 0.0, "epoch": 1}), tmp_path / "ck.pt")
    in_memory = Classifier(s.model, s.mean, s.std, s.class_names)
    loaded = load_model(tmp_path / "ck.pt")
    faces = np.random.default_rng(0).integers(0, 256, (9, 48, 48), dtype=np.uint8)
    np.testing.assert_array_equal(loaded.predict_proba(faces), in_memory.predict_proba(faces))
    assert loaded.class_names == list(s.class_names)
    assert loaded.meta["model_args"] == {"widths": [8, 16, 32], "hidden": 32, "activation": "elu"}
    assert isinstance(loaded.model.features[2], torch.nn.ELU)
    assert not loaded.model.training and not model_from_checkpoint(load_checkpoint(tmp_path / "ck.pt")).training


def test_predict_proba_contract(tiny_checkpoint):
    clf = load_model(tiny_checkpoint)
    faces = np.random.default_rng(1).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    p = clf.predict_proba(faces)
    assert p.shape == (3, 7) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert (p >= 0).all()
    assert clf.predict_proba(faces[0]).shape == (1, 7)                 # one face (48, 48)
    np.testing.assert_allclose(clf.predict_proba(faces, batch_size=2), p, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clf.predict(faces), p.argmax(1))
    assert clf.predict_proba(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)
    for bad in (np.zeros((2, 1, 48, 48), np.uint8), np.zeros((2, 64, 64), np.uint8)):
        with pytest.raises(ValueError, match=r"expected faces shaped \(N, 48, 48\)"):
            clf.predict_proba(bad)


def test_resnet_macs_by_hand():
    # stem 3x3 at 48 px, then per stage: a strided block with a 1x1 projection, and an identity block
    macs, cin, side = 48 * 48 * 9 * 1 * 16, 16, 48
    for w in (32, 64, 128, 256):
        side //= 2
        macs += side * side * (9 * cin * w + 9 * w * w + cin * w) + 2 * side * side * 9 * w * w
        cin = w
    assert count_macs(create_model("resnet_small")) == macs + 256 * 7


@pytest.mark.parametrize("name", ["vgg_small", "resnet_small"])
def test_crop_models_take_their_crop_side(name):
    model = create_model(name, img_size=40).eval()
    assert model(torch.randn(2, 1, 40, 40)).shape == (2, 7)
    assert count_macs(model) < count_macs(create_model(name))   # counted at 40 px, its own side


def test_fp16_stored_checkpoint_predicts_like_fp32(tiny_checkpoint, tmp_path):
    from fer_lib.train import export_checkpoint
    full, half = export_checkpoint(tiny_checkpoint, tmp_path / "fp32.pt"), export_checkpoint(
        tiny_checkpoint, tmp_path / "fp16.pt", half=True)
    assert {v.dtype for v in load_checkpoint(half)["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    assert half.stat().st_size < 0.6 * full.stat().st_size
    faces = np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    p32, p16 = load_model(full).predict_proba(faces), load_model(half).predict_proba(faces)
    np.testing.assert_array_equal(p16.argmax(1), p32.argmax(1))
    np.testing.assert_allclose(p16, p32, atol=2e-3)


def test_load_model_is_exported_as_the_readme_says(tiny_checkpoint):
    import fer_lib
    assert fer_lib.load_model(tiny_checkpoint).predict_proba(np.zeros((1, 48, 48), np.uint8)).shape == (1, 7)


@pytest.mark.parametrize("name", list_models())
def test_every_model_takes_the_recipe_knobs(name):
    """configs/*.json pass stage_drop, drop_rate, activation and (with --crop) img_size to any model."""
    model = create_model(name, stage_drop=0.0, drop_rate=0.4, activation="relu", img_size=40).eval()
    assert model(torch.zeros(2, 1, 40, 40)).shape == (2, 7)


def test_committed_checkpoints_are_small_and_load():
    """Every committed model stays under 20 MB (fp16 weights where that keeps the predictions) and
    rebuilds itself; the live model the tools default to is one of them."""
    from fer_lib.models import LIVE_MODEL
    root = Path(__file__).resolve().parents[1]
    committed = sorted((root / "models").glob("*.pt"))
    assert root / LIVE_MODEL in committed
    for path in committed:
        assert path.stat().st_size < 20e6, f"{path.name}: {path.stat().st_size / 1e6:.1f} MB"
        clf = load_model(path)
        assert clf.predict_proba(np.zeros((2, 48, 48), np.uint8)).shape == (2, 7)
