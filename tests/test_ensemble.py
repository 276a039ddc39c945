"""fer ensemble: checkpoints averaged into one self-describing checkpoint, members chosen on PublicTest."""
import json

import numpy as np
import pytest
import torch

from fer_lib import data as data_mod
from fer_lib.cli import main
from fer_lib.ensemble import build_ensemble, choose_members
from fer_lib.models import count_params, list_models, load_checkpoint, load_model
from fer_lib.train import export_checkpoint, save_atomic

FACES = np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)


def test_ensemble_predicts_the_mean_of_its_members(tiny_checkpoint, crop_checkpoint, tmp_path):
    path = save_atomic(build_ensemble([tiny_checkpoint, crop_checkpoint], "fp32"), tmp_path / "ens.pt")
    a, b = load_model(tiny_checkpoint), load_model(crop_checkpoint)
    assert b.input_size == 40 and load_model(path).input_size == 48  # the crop member sees its centre crop
    mean = (a.predict_proba(FACES) + b.predict_proba(FACES)) / 2
    np.testing.assert_allclose(load_model(path).predict_proba(FACES), mean, atol=1e-5)
    assert not np.allclose(mean, a.predict_proba(FACES), atol=1e-3)  # the members do differ


def test_an_ensemble_of_one_model_twice_is_that_model(tiny_checkpoint, tmp_path):
    path = save_atomic(build_ensemble([tiny_checkpoint, tiny_checkpoint], "fp32"), tmp_path / "twice.pt")
    np.testing.assert_allclose(load_model(path).predict_proba(FACES), load_model(tiny_checkpoint).predict_proba(FACES),
                               atol=1e-5)


def test_checkpoint_rebuilds_itself_and_names_its_members(tiny_checkpoint, crop_checkpoint, tmp_path):
    path = save_atomic(build_ensemble([tiny_checkpoint, crop_checkpoint]), tmp_path / "ens.pt")
    ck = load_checkpoint(path)  # weights_only: plain data
    assert ck["model_name"] == "ensemble" and [m["model_args"].get("img_size", 48) for m in
                                               ck["model_args"]["members"]] == [48, 40]
    assert [m["config"]["crop"] for m in ck["members"]] == [0, 40]
    assert load_model(path).meta["members"][0]["checkpoint"] == "best.pt"
    assert "ensemble" not in list_models()  # not an architecture fer train or the search may pick


def test_int8_storage_keeps_the_predictions_at_a_quarter_of_the_size(tiny_checkpoint, crop_checkpoint,
                                                                     synthetic_h5, confident, tmp_path):
    # members made confident (a gain of 30 on two barely trained models), the first one twice: where the two
    # disagree, the mean of two near one-hot members is a tie that any rounding tips (on an AMD CPU, whose bf16
    # training made them disagree more, only 18 of 70 faces were clear); with weights 2:1 no face is a tie
    a = confident(tiny_checkpoint, tmp_path / "a.pt", 30.0)
    paths = [a, a, confident(crop_checkpoint, tmp_path / "b.pt", 30.0)]
    faces, _ = data_mod.load_split(synthetic_h5, "val")
    full = save_atomic(build_ensemble(paths, "fp32"), tmp_path / "fp32.pt")
    small = save_atomic(build_ensemble(paths, "int8"), tmp_path / "int8.pt")
    assert {v.dtype for v in load_checkpoint(small)["state_dict"].values() if v.ndim >= 2} == {torch.int8}
    assert small.stat().st_size < 0.35 * full.stat().st_size
    p32, p8 = load_model(full).predict_proba(faces), load_model(small).predict_proba(faces)
    np.testing.assert_allclose(p8, p32, atol=0.02)
    top2 = np.sort(p32, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.04  # a face the quantization cannot tip over
    assert clear.sum() > len(faces) / 2
    np.testing.assert_array_equal(p8.argmax(1)[clear], p32.argmax(1)[clear])


def test_members_must_share_the_data(tiny_checkpoint, tmp_path):
    other = tmp_path / "other.pt"
    ck = load_checkpoint(tiny_checkpoint)
    ck["mean"] = 0.1
    torch.save(ck, other)
    with pytest.raises(ValueError, match="other.pt: its mean"):
        build_ensemble([tiny_checkpoint, other])


def test_choose_reads_publictest_only_and_respects_the_size_limit(tiny_checkpoint, crop_checkpoint, synthetic_h5,
                                                                   monkeypatch):
    read = []
    real = data_mod.load_split
    monkeypatch.setattr("fer_lib.ensemble.load_split", lambda h5, split, **kw: read.append(split) or real(h5, split))
    paths = [str(tiny_checkpoint), str(crop_checkpoint)]
    rows = choose_members(paths, synthetic_h5, max_members=2, max_mb=100)
    assert read == ["val"]
    faces, labels = real(synthetic_h5, "val")
    pair = next(r for r in rows if len(r["members"]) == 2)
    mean = (load_model(paths[0]).predict_proba(faces) + load_model(paths[1]).predict_proba(faces)) / 2
    assert pair["val_acc"] == pytest.approx((mean.argmax(1) == labels).mean())
    assert rows[0]["val_acc"] == max(r["val_acc"] for r in rows)
    one_mb = count_params(load_model(paths[0]).model) * 2 / 1e6
    capped = choose_members(paths, synthetic_h5, max_members=2, max_mb=one_mb * 1.5)
    assert not next(r for r in capped if len(r["members"]) == 2)["fits"]
    assert all(len(r["members"]) == 1 for r in capped if r["fits"])


def test_cli_writes_the_choice_and_never_overwrites(tiny_checkpoint, crop_checkpoint, synthetic_h5, tmp_path,
                                                    monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a, b = export_checkpoint(tiny_checkpoint, "a.pt"), export_checkpoint(crop_checkpoint, "b.pt")
    pair = {"members": ["a.pt", "b.pt"], "val_acc": 0.5, "val_nll": 1.0, "params": 1, "macs": 1, "mb": 1, "fits": True}
    alone = dict(pair, members=["a.pt"], val_acc=0.4)
    monkeypatch.setattr("fer_lib.ensemble.choose_members", lambda *a, **k: [pair, alone])
    args = ["ensemble", str(a), str(b), "--choose", "--data", str(synthetic_h5), "--out", "models/ens.pt"]
    assert main(args) == 0
    assert json.loads((tmp_path / "reports" / "ens" / "selection.json").read_text())["chosen"] == ["a.pt", "b.pt"]
    before = (tmp_path / "models" / "ens.pt").read_bytes()
    assert main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "models" / "ens.pt").read_bytes() == before
    monkeypatch.setattr("fer_lib.ensemble.choose_members", lambda *a, **k: [alone, pair])
    assert main(args[:-1] + ["models/other.pt"]) == 2
    assert "a.pt alone beats every ensemble" in capsys.readouterr().err
    assert not (tmp_path / "models" / "other.pt").exists()


def test_cli_errors_are_one_line(tiny_checkpoint, tmp_path, capsys):
    assert main(["ensemble", str(tiny_checkpoint), "--out", str(tmp_path / "e.pt")]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["ensemble", str(tiny_checkpoint), str(tmp_path / "nope.pt"), "--out", str(tmp_path / "e.pt")]) == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "e.pt").exists()
    args = ["ensemble", str(tiny_checkpoint), str(tiny_checkpoint), "--choose", "--storage", "int4"]
    assert main(args + ["--out", str(tmp_path / "e.pt")]) == 2
    err = capsys.readouterr().err
    assert "--storage int4" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "e.pt").exists()


def test_committed_ensemble_is_the_publictest_choice():
    """models/vgg_ensemble_fer2013.pt holds the members its selection.json chose: the best subset that fits,
    scored on PublicTest only."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    sel = json.loads((root / "reports" / "vgg_ensemble_fer2013" / "selection.json").read_text())
    ck = load_checkpoint(root / "models" / "vgg_ensemble_fer2013.pt")
    assert sel["split"].startswith("val") and sel["subsets"][0]["fits"]
    assert sel["chosen"] == sel["subsets"][0]["members"]
    assert [m["checkpoint"] for m in ck["members"]] == [Path(p).name for p in sel["chosen"]]
    best = max(r["val_acc"] for r in sel["subsets"] if r["fits"])
    assert sel["subsets"][0]["val_acc"] == best and all(r["mb"] <= sel["max_mb"] for r in sel["subsets"] if r["fits"])
