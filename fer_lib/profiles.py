"""Run profiles as data: configs/profiles/<name>.yaml holds every step's settings, one section per step,
each checked against the step's dataclass, so a misspelt key is an error that names it.

    from fer_lib.profiles import load_profile
    recipe = load_profile("smoke", {"train": {"epochs": 3}})   # {"train": TrainConfig(...), "tune": ...}

`smoke` runs the whole study in minutes on a 2-core CPU; `full` is the real study, and its `train`
section is the recipe of the committed models/vgg_small_fer2013.pt. A notebook's parameters cell names the profile and an
`overrides` dict; `fer study -p train.epochs=3` fills that dict for every notebook.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .errors import UserError
from .evaluate import EvalConfig
from .io import read_config
from .stream import StreamConfig
from .train import TrainConfig
from .tune import TuneConfig
from .video import VideoConfig

PROFILE_DIR = Path(__file__).resolve().parents[1] / "configs" / "profiles"
STEPS = {"train": TrainConfig, "tune": TuneConfig, "evaluate": EvalConfig, "stream": StreamConfig,
         "video": VideoConfig}


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_path(profile) -> Path:
    """A profile's file: a name from list_profiles(), or the path of a YAML file of the same shape."""
    path = Path(profile) if str(profile).endswith((".yaml", ".yml")) else PROFILE_DIR / f"{profile}.yaml"
    if not path.is_file():
        raise UserError(f"unknown profile {profile!r}; choose from {list_profiles()} or give a .yaml file")
    return path


def check_overrides(overrides: dict | None) -> dict:
    """{step: {field: value}} with every step and field known; UserError naming the first that is not."""
    for step, values in (overrides or {}).items():
        if step not in STEPS:
            raise UserError(f"unknown step {step!r} in the overrides; steps are {list(STEPS)}")
        if not isinstance(values, dict):
            raise UserError(f"overrides for {step!r} must be a dict of fields, got {values!r}")
        names = [f.name for f in dataclasses.fields(STEPS[step])]
        for key in values:
            if key not in names:
                raise UserError(f"{step}.{key}: {STEPS[step].__name__} has no such field; it has {names}")
    return overrides or {}


def load_profile(profile, overrides: dict | None = None) -> dict:
    """{step: its dataclass} from the profile's sections, with overrides ({step: {field: value}}) on top."""
    path = profile_path(profile)
    sections = read_config(path)
    try:
        check_overrides(sections)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    check_overrides(overrides)
    return {step: cls(**{**(sections.get(step) or {}), **(overrides or {}).get(step, {})})
            for step, cls in STEPS.items()}
