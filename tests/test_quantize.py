"""fer quantize: int8 inference calibrated on Training faces, rebuilt bit for bit from the checkpoint."""
import numpy as np
import pytest
import torch
from torch import nn

from fer_lib import data as data_mod
from fer_lib.cli import main
from fer_lib.models import Classifier, calibrate_int8, grad_cam, int8_model, load_checkpoint, load_model
from fer_lib.quantize import quantize_checkpoint


@pytest.fixture(scope="module")
def int8_pair(tiny_checkpoint, crop_checkpoint, synthetic_h5, confident, tmp_path_factory):
    """(float, int8) checkpoint paths for a 48-px and a 40-px-crop model, written by the CLI."""
    tmp = tmp_path_factory.mktemp("int8")
    pairs = []
    for name, src in (("full", tiny_checkpoint), ("crop", crop_checkpoint)):
        f = confident(src, tmp / f"{name}.pt")
        q = tmp / f"{name}_int8.pt"
        assert main(["quantize", str(f), "--data", str(synthetic_h5), "--out", str(q), "--faces", "128"]) == 0
        pairs.append((f, q))
    return pairs


def test_the_int8_network_runs_and_follows_the_float_one(int8_pair, synthetic_h5):
    faces, _ = data_mod.load_split(synthetic_h5, "val")
    for f, q in int8_pair:
        fc, qc = load_model(f), load_model(q)
        assert qc.input_size == fc.input_size  # the crop model still sees its 40-px centre crop
        assert not any(isinstance(m, nn.Conv2d) for m in qc.model.modules())  # quantized convolutions run
        assert qc.meta["quantization"]["calibration"]["split"] == "train"
        p32, p8 = fc.predict_proba(faces), qc.predict_proba(faces)
        assert not np.array_equal(p8, p32)
        np.testing.assert_allclose(p8, p32, atol=0.05)
        assert np.mean(p8.argmax(1) == p32.argmax(1)) >= 0.9  # how sure a tiny model is depends on the CPU
        top2 = np.sort(p32, 1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 0.1  # where the float model is sure, int8 says the same
        np.testing.assert_array_equal(p8.argmax(1)[clear], p32.argmax(1)[clear])


def test_the_checkpoint_rebuilds_the_calibrated_network_bit_for_bit(int8_pair, synthetic_h5):
    f, q = int8_pair[0]
    ck = load_checkpoint(q)  # weights_only: the ranges are plain tensors
    assert {v.dtype for v in ck["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    faces, _ = data_mod.load_split(synthetic_h5, "test")
    a, b = load_model(q), load_model(q)
    np.testing.assert_array_equal(a.predict_proba(faces), b.predict_proba(faces))
    fc = load_model(f)  # ranges observed with the source's fp32 weights, applied to the stored fp16 ones
    x, _ = data_mod.load_split(synthetic_h5, "train")
    idx = np.sort(np.random.default_rng(0).choice(len(x), 128, replace=False))
    again = int8_model(a.float_model, calibrate_int8(fc.model, [fc.preprocess(x[idx])]))
    with torch.no_grad():
        np.testing.assert_array_equal(again(a.preprocess(faces)).numpy(), a.model(a.preprocess(faces)).numpy())


def test_without_x86_int8_kernels_the_float_weights_run(int8_pair, synthetic_h5, monkeypatch):
    f, q = int8_pair[0]
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", property(lambda self: ["qnnpack"]))
    with pytest.warns(UserWarning, match="no x86 int8 kernels; its float weights run instead"):
        clf = load_model(q)
    assert "quantization" not in clf.meta and any(isinstance(m, nn.Conv2d) for m in clf.model.modules())
    faces, _ = data_mod.load_split(synthetic_h5, "val")
    np.testing.assert_allclose(clf.predict_proba(faces), load_model(f).predict_proba(faces), atol=2e-3)  # fp16 copy


def test_calibration_reads_training_faces_only(tiny_checkpoint, synthetic_h5, monkeypatch):
    read = []
    real = data_mod.load_split
    monkeypatch.setattr("fer_lib.quantize.load_split", lambda h5, split, **kw: read.append(split) or real(h5, split))
    quant = quantize_checkpoint(tiny_checkpoint, synthetic_h5, faces=64)
    assert read == ["train"] and quant["calibration"]["faces"] == 64


def test_grad_cam_of_an_int8_model_explains_its_float_original(int8_pair, synthetic_h5):
    _, q = int8_pair[0]
    faces, _ = data_mod.load_split(synthetic_h5, "val")
    qc = load_model(q)
    cams_q, proba_q = grad_cam(qc, faces[:4])
    cams_f, proba_f = grad_cam(Classifier(qc.float_model, qc.mean, qc.std, qc.class_names), faces[:4])
    np.testing.assert_array_equal(cams_q, cams_f)
    np.testing.assert_array_equal(proba_q, proba_f)
    assert cams_q.shape == (4, 48, 48) and cams_q.max() == pytest.approx(1.0)


def test_cli_refusals_are_one_line_and_keep_files(int8_pair, tiny_checkpoint, synthetic_h5, tmp_path, capsys):
    f, q = int8_pair[0]
    before = q.read_bytes()
    cases = [
        (["quantize", str(f), "--data", str(synthetic_h5), "--out", str(q)], "exists; pass --overwrite"),
        (["quantize", str(f), "--data", str(synthetic_h5), "--out", str(f)], "is an input of this command"),
        (["quantize", str(f), "--data", str(tmp_path / "no.h5"), "--out", str(tmp_path / "x.pt")], "no.h5: file not"),
        (["quantize", str(q), "--data", str(synthetic_h5), "--out", str(tmp_path / "y.pt")], "quantized already"),
        (["quantize", str(tmp_path / "gone.pt"), "--data", str(synthetic_h5), "--out", str(tmp_path / "z.pt")],
         "gone.pt"),
        (["quantize", str(f), "--data", str(synthetic_h5), "--out", str(tmp_path / "w.pt"), "--faces", "0"],
         "--faces 0"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert q.read_bytes() == before
    assert not any((tmp_path / n).exists() for n in ("x.pt", "y.pt", "z.pt", "w.pt"))
    ck = load_checkpoint(tiny_checkpoint)
    ck["mean"] = 0.1
    torch.save(ck, tmp_path / "other.pt")
    assert main(["quantize", str(tmp_path / "other.pt"), "--data", str(synthetic_h5), "--out", str(tmp_path / "o.pt")]) == 2
    assert "other normalization" in capsys.readouterr().err


def test_fer_evaluate_scores_the_int8_network(int8_pair, synthetic_h5, tmp_path):
    from fer_lib.evaluate import evaluate_checkpoint
    _, q = int8_pair[1]  # the crop model: ten-crop views are its own 40-px side
    m = evaluate_checkpoint(q, synthetic_h5, tmp_path / "eval", tta=("flip", "tencrop"), n_bootstrap=0,
                            progress=False)
    faces, labels = data_mod.load_split(synthetic_h5, "test")
    assert m["test"]["plain"]["accuracy"] == pytest.approx(np.mean(load_model(q).predict(faces) == labels))
    assert {"plain", "flip", "tencrop"} == set(m["test"])
    assert (tmp_path / "eval" / "gradcam_test.png").is_file()  # Grad-CAM through the float original
