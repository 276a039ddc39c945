"""Run profiles as data: configs/profiles/<name>.yaml holds every step's settings, one section per step,
each checked against the step's dataclass, so a misspelt key is an error that names it.

    from fer_lib.profiles import load_profile
    recipe = load_profile("smoke", {"train": {"epochs": 3}})   # {"train": TrainConfig(...), "tune": ...}

`smoke` runs the whole study in minutes on a 2-core CPU; `full` is the real study: its `train` section is
the recipe of the accurate model, and its `models` section what notebook 02 makes from it (fer_lib.chain).
A notebook's parameters cell names the profile and an `overrides` dict; `fer study -p train.epochs=3` fills
that dict for every notebook. `describe_profile` is the first line a notebook prints: its profile, what that
notebook took in the studies run here, how to pick another.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .chain import ModelsConfig
from .data import repo_root
from .errors import UserError
from .evaluate import EvalConfig
from .io import read_config
from .stream import StreamConfig
from .train import TrainConfig
from .tune import TuneConfig
from .video import VideoConfig

PROFILE_DIR = Path(__file__).resolve().parents[1] / "configs" / "profiles"
STEPS = {"train": TrainConfig, "models": ModelsConfig, "tune": TuneConfig, "evaluate": EvalConfig, "stream": StreamConfig,
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


def format_duration(seconds: float) -> str:
    """'42 s', '77 min', '24.9 h'."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def study_times(notebook: str, root=None) -> dict:
    """{profile: (seconds, run, date, cpu)}: how long `notebook` ("04" or "04_evaluate") took in the latest
    finished study of each profile under root/reports/ (the committed ones) and root/runs/reports/ (a user's),
    from their manifest.json, on the CPU named there."""
    found, root = {}, Path(root or repo_root())
    for path in sorted([*root.glob("reports/*/manifest.json"), *root.glob("runs/reports/*/manifest.json")]):
        try:
            m = json.loads(path.read_text())
            env = m.get("environment") or {}
            for nb in m.get("notebooks", []):
                if nb["name"][:2] == notebook[:2] and nb.get("status") == "ok" and nb.get("wall_s") is not None:
                    when = (nb.get("end") or m.get("start") or "")[:10]
                    cpu = f"{env.get('cpu', 'a CPU')}, {env.get('cpu_count', '?')} cores"
                    if m["profile"] not in found or when > found[m["profile"]][2]:
                        found[m["profile"]] = (float(nb["wall_s"]), path.parent.relative_to(root).as_posix(), when,
                                               cpu)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a partial or foreign manifest times nothing
    return found


def describe_profile(profile, notebook: str, root=None) -> str:
    """What a notebook says first: the profile it runs, how long this notebook took with each profile in the
    studies of this checkout (none yet: says so, never a guess), and how to pick another profile."""
    times = study_times(notebook, root)
    lines = [f"profile {profile!r} ({profile_path(profile).name})"]
    for name in dict.fromkeys([str(profile), *list_profiles()]):
        if name in times:
            seconds, run, when, cpu = times[name]
            lines.append(f"  {name}: this notebook took {format_duration(seconds)} in the study {run}/ of {when} "
                         f"({cpu})")
        else:
            lines.append(f"  {name}: no {name} study in this checkout to time this notebook yet "
                         f"(fer study --profile {name} records one in runs/reports/<run>/manifest.json)")
    others = [n for n in list_profiles() if n != str(profile)] or ["full"]
    lines.append(f"another profile: profile = {others[0]!r} in the parameters cell, papermill -p profile {others[0]}, "
                 f"or the whole study: fer study --profile {others[0]}")
    return "\n".join(lines)
