"""Post-training int8 quantization of a trained checkpoint, calibrated on Training faces.

    fer quantize models/vgg_crop44_fer2013.pt --data data/fer2013.h5 --out models/vgg_crop44_int8_fer2013.pt

The network runs with int8 weights (one scale per output channel) and int8 activations, whose ranges are
observed on --faces Training faces; PublicTest and PrivateTest are not read. The checkpoint keeps the float
weights and those ranges, so load_model rebuilds the same int8 network bit for bit (PyTorch's x86 int8
kernels, AVX2 or newer), and Grad-CAM or distillation still use the float one. Score it with fer evaluate
like any checkpoint: quantization changes predictions a little, so its own metrics are the ones to read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import load_split, read_info
from .errors import UserError, check_output_path
from .flags import add_dataclass_arguments, check_settings, dataclass_from_arguments, setting
from .models import INT8_ENGINE, calibrate_int8, load_checkpoint, load_model
from .train import export_checkpoint


@dataclass
class QuantizeConfig:
    out: str = "models/model_int8.pt"  # the int8 checkpoint to write
    data: str = "data/fer2013.h5"      # HDF5 of fer preprocess; only its Training split is read
    faces: int = setting(2048, low=1)  # Training faces (drawn at random) that calibrate the activation ranges
    seed: int = setting(0, low=0)      # which faces
    half: bool = True                  # keep the float weights as fp16 (the int8 ones are made at load)

    def __post_init__(self):
        check_settings(self)


def quantize_checkpoint(src, data, faces: int = 2048, seed: int = 0) -> dict:
    """The `quantization` entry for checkpoint src: engine, calibration provenance and observer state."""
    ck = load_checkpoint(src)
    if ck.get("quantization"):
        raise UserError(f"{src}: is quantized already; give its float original")
    info = read_info(data)
    if (ck["mean"], ck["std"], list(ck["class_names"])) != (info["mean"], info["std"], list(info["class_names"])):
        raise UserError(f"{src} was trained with other normalization or classes than {data}")
    if faces < 1:
        raise UserError(f"--faces {faces}: calibrate on at least one face")
    clf = load_model(src)
    x, _ = load_split(data, "train")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), min(faces, len(x)), replace=False))
    batches = (clf.preprocess(x[idx[i:i + 256]]) for i in range(0, len(idx), 256))
    observers = calibrate_int8(clf.model, batches)
    return {"engine": INT8_ENGINE, "calibration": {"data": str(data), "split": "train", "faces": len(idx),
                                                   "seed": seed, "source": str(src)},
            "observers": observers}


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="a fer train (or fer ensemble) checkpoint with float weights")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_dataclass_arguments(p, QuantizeConfig)


def run(args) -> int:
    cfg = dataclass_from_arguments(args, QuantizeConfig)
    out = Path(cfg.out)
    check_output_path(out, "--out", overwrite=args.overwrite, inputs=(args.checkpoint, cfg.data))
    if not Path(cfg.data).is_file():
        raise UserError(f"--data {cfg.data}: file not found (its Training faces calibrate the int8 ranges)")
    quant = quantize_checkpoint(args.checkpoint, cfg.data, cfg.faces, cfg.seed)
    export_checkpoint(args.checkpoint, out, half=cfg.half, quantization=quant)
    load_model(out)  # the written file builds its int8 network
    print(f"{out}: int8 ({INT8_ENGINE}), activation ranges from {quant['calibration']['faces']} Training faces "
          f"of {cfg.data}; {out.stat().st_size / 2**20:.1f} MB; score it with fer evaluate --checkpoint {out}")
    return 0
