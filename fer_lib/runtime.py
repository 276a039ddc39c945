"""The inference backends behind fer predict and fer video: torch (a .pt checkpoint) or onnxruntime (a
.onnx file from fer export), one interface: uint8 faces (N, 48, 48) -> probabilities (N, 7).

    from fer_lib.runtime import load_classifier
    clf = load_classifier("models/vgg_crop44_int8_fer2013.onnx")   # backend "auto": onnx for .onnx
    clf.predict_proba(faces)                                        # (N, 7) float32

The onnxruntime path imports neither torch nor the models module: a photo is classified in a fraction
of the time torch takes to import. The ONNX graph holds the crop and normalization (fer export).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .assets import LIVE_MODEL, LIVE_ONNX, find_asset
from .errors import UserError

BACKENDS = ("auto", "torch", "onnx")


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("--backend onnx needs onnxruntime: pip install 'fer_lib[onnx]' "
                        "(or pip install onnxruntime)") from None
    return onnxruntime


def onnxruntime_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxClassifier:
    """An exported .onnx model under onnxruntime: uint8 faces (N, 48, 48) -> probabilities (N, 7).
    class_names and the source checkpoint's metadata come from the file's metadata_props."""

    def __init__(self, path, threads: int | None = None):
        ort = _import_onnxruntime()
        opts = ort.SessionOptions()
        if threads:  # like torch.set_num_threads: a few faces per frame gain nothing from more
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # warnings about unused initializers are not the user's business
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # not an ONNX file, or an op this onnxruntime lacks
            raise UserError(f"{path}: not an ONNX model onnxruntime can run ({str(e).splitlines()[0][:120]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "class_names" not in meta:
            raise UserError(f"{path}: not a fer export model (no class_names in its metadata)")
        self.path = str(path)
        self.class_names = json.loads(meta["class_names"])
        self.meta = {k: json.loads(v) for k, v in meta.items() if k != "class_names"}
        self.input_name = self.session.get_inputs()[0].name

    def predict_proba(self, faces, batch_size: int = 512) -> np.ndarray:
        """Probabilities (N, num_classes) float32 of uint8 faces (N, 48, 48) or one face (48, 48)."""
        faces = np.ascontiguousarray(faces)
        faces = faces[None] if faces.ndim == 2 else faces
        if faces.ndim != 3 or faces.shape[1:] != (48, 48):
            raise ValueError(f"expected faces shaped (N, 48, 48), got {tuple(faces.shape)}")
        faces = faces.astype(np.uint8, copy=False)
        out = [self.session.run(None, {self.input_name: faces[i:i + batch_size]})[0]
               for i in range(0, len(faces), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, faces) -> np.ndarray:
        return self.predict_proba(faces).argmax(1)


def choose_backend(checkpoint=None, backend: str = "auto") -> str:
    """torch or onnx. auto: onnx for a .onnx file, and for the live model when onnxruntime is installed and
    the live model's ONNX graph is present (it is the faster one: benchmarks/onnx.py); torch otherwise."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: choose from {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if checkpoint is not None:
        return "onnx" if str(checkpoint).endswith(".onnx") else "torch"
    return "onnx" if onnxruntime_available() and find_asset(LIVE_ONNX) else "torch"


def resolve_model_file(checkpoint=None, backend: str = "torch") -> Path:
    """The file a backend reads: `checkpoint`, or the live model (its .onnx for the onnx backend)."""
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise UserError(f"{checkpoint}: no such checkpoint file")
        if backend == "onnx" and not str(checkpoint).endswith(".onnx"):
            raise UserError(f"{checkpoint}: --backend onnx runs a .onnx file; make one with "
                            f"fer export --onnx {checkpoint}")
        return Path(checkpoint)
    rel = LIVE_ONNX if backend == "onnx" else LIVE_MODEL
    path = find_asset(rel)
    if path is None:
        raise UserError(f"{rel}: the default live model is missing; give --checkpoint")
    return path


def load_classifier(checkpoint=None, backend: str = "auto", threads: int | None = None):
    """A Classifier (torch) or OnnxClassifier for a checkpoint path, or the live model when None."""
    backend = choose_backend(checkpoint, backend)
    path = resolve_model_file(checkpoint, backend)
    if backend == "onnx":
        _import_onnxruntime()  # the one-line error before anything else is read
        return OnnxClassifier(path, threads)
    from .models import load_model  # torch is imported here, not for the onnx path
    return load_model(path)
