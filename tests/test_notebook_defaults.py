"""Notebooks 04 and 05 run top to bottom with their default parameters after the smoke set-up, as JupyterLab
runs them: no parameters passed, the working folder is notebooks/.

The checkout is a copy in tmp_path (its notebooks/ and what `make study-smoke` without DATA leaves:
runs/study/smoke-synthetic/synthetic.h5), found by the kernels through $FER_ROOT, so that the user's data/,
runs/ and reports/ are neither read nor written.
"""
import json
import os
import shutil
from pathlib import Path

import nbformat
import papermill
import pytest

from fer_lib.data import ROOT_ENV, SETUP_H5
from fer_lib.study import read_parameters
from fer_lib.synthetic import write_synthetic_h5

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the repo's notebooks after the smoke set-up without FER-2013 (fer study --profile smoke runs
    notebook 01 with its own synthetic_per_class into runs/study/smoke-synthetic/synthetic.h5)."""
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    per_class = read_parameters(ROOT / "notebooks" / "01_preprocess.ipynb")["synthetic_per_class"]
    write_synthetic_h5(root / SETUP_H5[-1], tuple(per_class), seed=0)
    return root


def _run_as_jupyterlab(root: Path, name: str, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv(ROOT_ENV, str(root))       # the kernel inherits it: find_h5 looks in the copy
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = root / "notebooks" / f"{name}.ipynb"
    out = root / f"executed_{name}.ipynb"
    papermill.execute_notebook(str(nb), str(out), parameters={}, cwd=str(nb.parent), progress_bar=False,
                               kernel_name="python3")
    return nbformat.read(str(out), as_version=4)


def _first_output(nb) -> str:
    code = [c for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    return "".join(o.get("text", "") for o in code[1].outputs)   # code[0] is the parameters cell


def test_04_runs_with_its_defaults_after_the_smoke_setup(checkout, monkeypatch):
    nb = _run_as_jupyterlab(checkout, "04_evaluate", monkeypatch)
    assert _first_output(nb).startswith("profile 'smoke'"), "the first output must state the profile"
    assert "profile = 'full' in the parameters cell" in _first_output(nb)
    metrics = list((checkout / "reports" / "latest").glob("*/metrics.json"))
    assert len(metrics) == 1, f"04 wrote no metrics.json under its default report_dir: {metrics}"
    assert json.loads(metrics[0].read_text())


def test_05_runs_with_its_defaults_after_the_smoke_setup(checkout, monkeypatch):
    nb = _run_as_jupyterlab(checkout, "05_live_video", monkeypatch)
    assert _first_output(nb).startswith("profile 'smoke'")
    report = checkout / "reports" / "latest"
    for name in ("05_video.json", "05_smoothers.json", "megamind_overlay.mp4"):
        assert (report / name).is_file(), f"05 wrote no {name} under its default report_dir"
    assert json.loads((report / "05_smoothers.json").read_text())["split"] == "test"
