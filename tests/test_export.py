"""fer export --onnx and the onnxruntime backend: the ONNX graph predicts what the torch Classifier does."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from fer_lib import cli  # noqa: E402
from fer_lib.data import load_split  # noqa: E402
from fer_lib.ensemble import build_ensemble  # noqa: E402
from fer_lib.export import export_onnx, quantize_onnx  # noqa: E402
from fer_lib.models import load_model  # noqa: E402
from fer_lib.runtime import OnnxClassifier, load_classifier  # noqa: E402
from fer_lib.train import save_atomic  # noqa: E402


@pytest.fixture(scope="module")
def faces(synthetic_h5):
    return load_split(synthetic_h5, "val")[0]  # (70, 48, 48) uint8


def test_the_graph_takes_uint8_faces_and_returns_the_torch_probabilities(tiny_checkpoint, faces, tmp_path):
    meta = export_onnx(tiny_checkpoint, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17 == meta["opset"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    clf, ort = load_model(tiny_checkpoint), OnnxClassifier(tmp_path / "m.onnx")
    assert ort.class_names == clf.class_names
    want, got = clf.predict_proba(faces), ort.predict_proba(faces)
    assert got.shape == (70, 7) and np.allclose(got.sum(1), 1, atol=1e-5)
    assert np.abs(got - want).max() < 1e-5
    assert (got.argmax(1) == want.argmax(1)).all()
    assert ort.predict_proba(faces[0]).shape == (1, 7)  # one face (48, 48), as Classifier takes it


def test_crop_models_and_int8_stored_ensembles_crop_inside_the_graph(tiny_checkpoint, crop_checkpoint, faces,
                                                                      tmp_path):
    ens = save_atomic(build_ensemble([tiny_checkpoint, crop_checkpoint], "int8"), tmp_path / "ens.pt")
    for ck in (crop_checkpoint, ens):
        export_onnx(ck, tmp_path / "m.onnx")
        want, got = load_model(ck).predict_proba(faces), OnnxClassifier(tmp_path / "m.onnx").predict_proba(faces)
        assert np.abs(got - want).max() < 1e-5, ck


def test_an_int8_graph_keeps_the_predictions(tiny_checkpoint, confident, faces, synthetic_h5, tmp_path):
    ck = confident(tiny_checkpoint, tmp_path / "confident.pt")
    export_onnx(ck, tmp_path / "f.onnx")
    quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", load_split(synthetic_h5, "train")[0][:256])
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    assert (tmp_path / "q.onnx").stat().st_size < 0.4 * (tmp_path / "f.onnx").stat().st_size
    want, got = load_model(ck).predict(faces), OnnxClassifier(tmp_path / "q.onnx").predict(faces)
    assert (got == want).mean() >= 0.95


def test_cli_export_writes_once_and_names_a_bad_file(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert cli.main(["export", "--onnx", str(tiny_checkpoint), "--out", str(out)]) == 0
    assert "opset 17" in capsys.readouterr().out and out.stat().st_size > 0
    assert cli.main(["export", "--onnx", str(tiny_checkpoint), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert cli.main(["export", "--onnx", str(junk), "--out", str(tmp_path / "j.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.pt: not a readable fer_lib checkpoint" in err
    assert not (tmp_path / "j.onnx").exists()


def test_predict_with_the_onnx_backend_gives_the_torch_labels(tiny_checkpoint, faces, tmp_path):
    export_onnx(tiny_checkpoint, tmp_path / "m.onnx")
    for i, f in enumerate(faces[:6]):
        cv2.imwrite(str(tmp_path / f"face_{i}.png"), f)
    rows = {}
    for backend, ck in (("torch", tiny_checkpoint), ("onnx", tmp_path / "m.onnx")):
        assert cli.main(["predict", *[str(tmp_path / f"face_{i}.png") for i in range(6)], "--no-detect",
                         "--checkpoint", str(ck), "--backend", backend, "--out", str(tmp_path / backend)]) == 0
        rows[backend] = (tmp_path / backend / "faces.csv").read_text().splitlines()
    labels = [[r.split(",")[-2] for r in rows[b][1:]] for b in ("torch", "onnx")]
    assert labels[0] == labels[1] and len(labels[0]) == 6


def test_the_onnx_backend_without_onnxruntime_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    monkeypatch.setattr("fer_lib.runtime.onnxruntime_available", lambda: False)
    cv2.imwrite(str(tmp_path / "f.png"), np.full((48, 48), 100, np.uint8))
    assert cli.main(["predict", str(tmp_path / "f.png"), "--no-detect", "--backend", "onnx",
                     "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backend onnx needs onnxruntime" in err
    with pytest.raises(ValueError, match="runs a .onnx file"):
        load_classifier(tmp_path / "f.png", "onnx")


def test_the_onnx_path_never_imports_torch(tiny_checkpoint, tmp_path):
    export_onnx(tiny_checkpoint, tmp_path / "m.onnx")
    code = ("import sys, numpy as np; from fer_lib.predict import detect_emotions; import fer_lib.video; "
            f"f = detect_emotions(np.full((48, 48), 100, np.uint8), r'{tmp_path / 'm.onnx'}', detect=False); "
            "assert len(f) == 1 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fer_models_prints_the_live_models_card(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vgg_crop44_int8_fer2013.pt" in out and "PrivateTest" in out and "not fit for" in out
