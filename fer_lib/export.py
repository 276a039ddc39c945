"""Any committed checkpoint to ONNX, with the crop and normalization inside the graph.

    fer export --onnx models/vgg_crop44_int8_fer2013.pt --out models/vgg_crop44_int8_fer2013.onnx \\
        --int8 --data data/fer2013.h5          # an int8 graph of onnxruntime's own, calibrated on Training faces
    fer export --onnx models/vgg_ensemble_fer2013.pt --out ens.onnx   # float graph (opset 17)

The graph takes uint8 faces (N, 48, 48) and returns the 7 class probabilities (N, 7): the same centre crop
and mean/std as load_model's Classifier, then softmax (an ensemble: its members' mean). A torch int8 network
(fer quantize) cannot be exported (the exporter lacks its quantized ops), so its float weights are; --int8
quantizes the ONNX graph with onnxruntime.quantization (static, per-channel QDQ, activation ranges observed on
--faces Training faces, like fer quantize). The file is checked by onnx.checker and keeps the class names and
the source checkpoint in its metadata. Run it with fer predict / fer video --backend onnx --checkpoint F.onnx.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserError, check_output_path
from .flags import add_dataclass_arguments, dataclass_from_arguments
from .io import write_atomic
from .models import center_crop, load_checkpoint, model_from_checkpoint

OPSET = 17  # onnxruntime >= 1.14 runs it, and so does onnxruntime-web


@dataclass
class ExportConfig:
    out: str | None = None        # the .onnx file (default: the checkpoint's path with .onnx)
    opset: int = OPSET            # ONNX opset of the graph
    int8: bool = False            # quantize the graph with onnxruntime.quantization (needs --data)
    data: str = "data/fer2013.h5"  # HDF5 of fer preprocess; with --int8 only its Training split is read
    faces: int = 2048             # Training faces (drawn at random) that calibrate the int8 ranges
    seed: int = 0                 # which faces


class _WithPreprocessing(nn.Module):
    """uint8 faces (N, 48, 48) -> probabilities (N, C): what Classifier.predict_proba does, as one graph."""

    def __init__(self, model: nn.Module, mean: float, std: float):
        super().__init__()
        self.model, self.mean, self.std = model, float(mean), float(std)
        self.side = int(getattr(model, "img_size", 48))

    def forward(self, faces):  # (N, 48, 48) uint8
        x = center_crop(faces, self.side)[:, None].float()  # (N, 1, s, s)
        return torch.softmax(self.model((x / 255.0 - self.mean) / self.std), 1)


def export_onnx(checkpoint, out, opset: int = OPSET) -> dict:
    """The float graph of `checkpoint` (int8 storage and torch int8 inference exported as their float weights)
    written to `out`, checked by onnx.checker; returns the metadata stored in it."""
    import onnx
    ck = load_checkpoint(checkpoint)  # UserError for a file that is not a checkpoint
    wrapped = _WithPreprocessing(model_from_checkpoint(ck), ck["mean"], ck["std"]).eval()
    meta = {"class_names": list(ck["class_names"]), "source": str(checkpoint), "model_name": ck["model_name"],
            "mean": float(ck["mean"]), "std": float(ck["std"]), "input": "uint8 faces (N, 48, 48)",
            "output": "probabilities (N, 7)", "opset": opset,
            "weights": "float (from the torch int8 model's float weights)" if ck.get("quantization") else "float"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        tmp_path = Path(tmp) / "model.onnx"
        torch.onnx.export(wrapped, (torch.zeros(2, 48, 48, dtype=torch.uint8),), str(tmp_path), dynamo=False,
                          input_names=["faces"], output_names=["probabilities"], opset_version=opset,
                          dynamic_axes={"faces": {0: "N"}, "probabilities": {0: "N"}})
        model = onnx.load(str(tmp_path))
    _set_metadata(model, meta)
    onnx.checker.check_model(model, full_check=True)
    write_atomic(out, model.SerializeToString())
    return meta


def _set_metadata(model, meta: dict) -> None:
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=json.dumps(v))


def quantize_onnx(src, out, faces: np.ndarray) -> None:
    """onnxruntime's static int8 quantization of float graph `src` (QDQ, per-channel weights, int8
    activations), its ranges observed on uint8 `faces` (N, 48, 48); metadata kept, checked by onnx.checker."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Faces(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"faces": faces[i:i + 256]} for i in range(0, len(faces), 256)])

        def get_next(self):
            return next(self.batches, None)

    src_model = onnx.load(str(src))
    with tempfile.TemporaryDirectory() as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(str(src), str(pre))  # shapes and folded BN: what quantize_static expects
        quantize_static(str(pre), str(q), Faces(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm", "Relu", "MaxPool", "Flatten"])
        model = onnx.load(str(q))
    meta = {p.key: json.loads(p.value) for p in src_model.metadata_props}
    meta["weights"] = f"int8 (onnxruntime.quantization static QDQ, {len(faces)} Training faces)"
    _set_metadata(model, meta)
    onnx.checker.check_model(model, full_check=True)
    write_atomic(out, model.SerializeToString())


def calibration_faces(data, faces: int = 2048, seed: int = 0) -> np.ndarray:
    """uint8 (n, 48, 48) Training faces drawn at random (PublicTest and PrivateTest are not read)."""
    from .data import load_split
    if not Path(data).is_file():
        raise UserError(f"--data {data}: file not found (its Training faces calibrate the int8 ranges)")
    if faces < 1:
        raise UserError(f"--faces {faces}: calibrate on at least one face")
    x, _ = load_split(data, "train")
    return x[np.sort(np.random.default_rng(seed).choice(len(x), min(faces, len(x)), replace=False))]


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="a fer train, fer ensemble or fer quantize checkpoint")
    p.add_argument("--onnx", action="store_true", required=True, help="export to ONNX (the one format offered)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_dataclass_arguments(p, ExportConfig)


def run(args) -> int:
    cfg = dataclass_from_arguments(args, ExportConfig)
    out = Path(cfg.out or Path(args.checkpoint).with_suffix(".onnx"))
    if out.suffix != ".onnx":
        raise UserError(f"--out {out}: an ONNX file ends in .onnx")
    check_output_path(out, "--out", overwrite=args.overwrite)
    load_checkpoint(args.checkpoint)  # a file that is not a checkpoint fails before any work
    faces = calibration_faces(cfg.data, cfg.faces, cfg.seed) if cfg.int8 else None
    if cfg.int8:
        with tempfile.TemporaryDirectory() as tmp:
            meta = export_onnx(args.checkpoint, Path(tmp) / "float.onnx", cfg.opset)
            quantize_onnx(Path(tmp) / "float.onnx", out, faces)
    else:
        meta = export_onnx(args.checkpoint, out, cfg.opset)
    kind = f"int8 graph, ranges from {len(faces)} Training faces of {cfg.data}" if cfg.int8 else meta["weights"]
    print(f"{out}: ONNX opset {cfg.opset} ({kind}), uint8 faces (N, 48, 48) in, 7 probabilities out; "
          f"checked by onnx.checker; {out.stat().st_size / 2**20:.1f} MB")
    return 0
