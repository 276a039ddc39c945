"""Progress bars for people: on stdout inside a notebook (JupyterLab draws stderr as an error stripe),
and off in headless runs, which nobody watches (fer study and the nbval tests set FER_PROGRESS=0).

    from fer_lib.progress import bar
    for x in bar(items, desc="ingest", unit="img"): ...
"""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

ENV = "FER_PROGRESS"  # "0": no bars


def in_notebook() -> bool:
    """True inside a Jupyter kernel, whose stdout and stderr become cell outputs."""
    return "ipykernel" in sys.modules and type(sys.stdout).__name__ == "OutStream"


def bar(iterable=None, disable: bool = False, **kwargs):
    """tqdm(iterable, **kwargs), on stdout in a notebook, disabled by FER_PROGRESS=0."""
    off = disable or os.environ.get(ENV) == "0"
    return tqdm(iterable, disable=off, **({"file": sys.stdout} if in_notebook() else {}), **kwargs)
