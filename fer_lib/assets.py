"""The files the package carries: the live model and its model card, found wherever fer_lib is installed.

    from fer_lib.assets import LIVE_MODEL, find_asset
    find_asset(LIVE_MODEL)   # Path of the live checkpoint: in the working folder, the wheel, or the checkout

In the checkout they live in models/; a built wheel carries the same files as package data under
fer_lib/live/ (pyproject.toml maps that folder to models/), read through importlib.resources. A leaf:
it imports neither torch nor onnxruntime, so the fast paths can ask for the live model's path.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

# The live model: what `fer video`, `fer predict` and notebooks 04/05 use unless told otherwise. The single
# network with the best int8 PublicTest (fer quantize) that runs Megamind at 2x real time or more on a 2-core
# AVX2 CPU (reports/findings.md, "int8: the live model"). Relative to the checkout; the wheel keeps its file name.
LIVE_MODEL = "models/vgg_crop44_int8_fer2013.pt"
LIVE_ONNX = "models/vgg_crop44_int8_fer2013.onnx"  # the same network for onnxruntime, its own int8 graph
MODEL_CARD = "models/vgg_crop44_int8_fer2013.md"
CHECKOUT = Path(__file__).resolve().parents[1]


def find_asset(rel: str) -> Path | None:
    """A packaged file by its checkout path: under the working folder (as before), else in the installed
    package (fer_lib/live/<name>), else in the checkout this module sits in; None when none has it."""
    here = Path(rel)
    if here.is_file():
        return here
    packaged = importlib.resources.files("fer_lib").joinpath("live", here.name)
    if packaged.is_file():
        return Path(str(packaged))  # a wheel installs as plain files, so the resource has a real path
    path = CHECKOUT / rel
    return path if path.is_file() else None


def shipped_name(path) -> str | None:
    """`models/<name>` when path is a model the project ships (the checkout's models/ or the wheel's copy),
    else None: a report then knows whether it scored the shipped model or one its own run trained."""
    path = Path(path).resolve()
    packaged = Path(str(importlib.resources.files("fer_lib").joinpath("live")))
    for folder in (CHECKOUT / "models", packaged):
        if path.parent == folder.resolve():
            return f"models/{path.name}"
    return None


def model_card() -> str:
    """The live model's card (what it was trained on, its accuracy, what it is not fit for)."""
    path = find_asset(MODEL_CARD)
    return path.read_text() if path else f"{MODEL_CARD}: the model card is missing from this installation\n"


def add_arguments(p) -> None:
    """fer models: no options; it prints the card of the live model the installed package carries."""


def run(args) -> int:
    print(f"live model: {find_asset(LIVE_MODEL) or LIVE_MODEL + ' (missing)'}")
    onnx = find_asset(LIVE_ONNX)
    print(f"onnxruntime graph: {onnx or LIVE_ONNX + ' (missing)'}\n")
    print(model_card(), end="")
    return 0
