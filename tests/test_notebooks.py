"""Notebook hygiene: notebooks/ is committed clean (results live in reports/), each opens with a
documented, literal `parameters` cell, and tests/nbval/ holds an up-to-date reference of each."""
import ast
import io
import tokenize
from pathlib import Path

import nbformat
import papermill
import pytest

from fer_lib.profiles import list_profiles
from fer_lib.study import CHECK_MARK, checked, read_parameters

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])


def _code_cells(path):
    return [c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]


def test_first_code_cell_is_a_literal_parameters_cell(path):
    cells = _code_cells(path)
    assert cells and "parameters" in cells[0].metadata.get("tags", []), \
        f"{path.name}: the first code cell must be tagged 'parameters' (papermill injects overrides after it)"
    params = read_parameters(path)               # raises, naming the line, on anything but `name = literal`
    assert params.get("profile") in list_profiles(), f"{path.name}: `profile` must be one of {list_profiles()}"
    assert "report_dir" in params, f"{path.name}: needs a `report_dir` parameter (where readers' files go)"


def test_every_parameter_is_documented_with_a_comment(path):
    source = _code_cells(path)[0].source
    commented = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                 if tok.type == tokenize.COMMENT}
    bare = [n.targets[0].id for n in ast.parse(source).body if n.end_lineno not in commented]
    assert not bare, f"{path.name}: parameter(s) {bare} need a comment on their line saying what they do"
    # papermill --help-notebook reads the same comments; a second '=' on a line makes it skip the parameter
    seen = papermill.inspect_notebook(str(path))
    assert set(seen) == set(read_parameters(path)) and all(p["help"] for p in seen.values()), \
        f"{path.name}: papermill cannot read every parameter and its comment (avoid '=' inside comments)"


def test_committed_clean(path):
    cells = _code_cells(path)
    errors = [i for i, c in enumerate(cells) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: error outputs committed in code cell(s) {errors}"
    dirty = [i for i, c in enumerate(cells) if c.outputs or c.execution_count is not None]
    assert not dirty, (f"{path.name}: code cell(s) {dirty} have outputs or execution counts; commit notebooks "
                       "clean (results live in reports/): jupyter nbconvert --clear-output --inplace")
    assert nbformat.read(str(path), as_version=4).metadata.get("kernelspec", {}).get("name") == "python3"


def test_marks_deterministic_outputs_for_nbval(path):
    assert any(map(checked, _code_cells(path))), f"{path.name}: no cell starts with {CHECK_MARK}"


def test_nbval_reference_is_up_to_date(path):
    ref = ROOT / "tests" / "nbval" / path.name
    assert ref.exists(), f"{ref.relative_to(ROOT)} missing: run `make nbval-refs`"
    ref_cells = [c for c in nbformat.read(str(ref), as_version=4).cells
                 if "injected-parameters" not in c.metadata.get("tags", [])]
    nb_cells = nbformat.read(str(path), as_version=4).cells
    assert [(c.cell_type, c.source) for c in ref_cells] == [(c.cell_type, c.source) for c in nb_cells], \
        f"{ref.relative_to(ROOT)} is stale ({path.name} changed since): run `make nbval-refs`"


def test_metadata_is_what_jupyterlab_writes(path):
    """Opening a notebook must not mark it modified: JupyterLab rewrites kernelspec and language_info
    from the kernel, so they are committed as the kernel reports them."""
    from jupyter_client.kernelspec import KernelSpecManager
    meta = nbformat.read(str(path), as_version=4).metadata
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert meta["kernelspec"] == {"display_name": spec.display_name, "language": spec.language, "name": "python3"}
    assert {k: v for k, v in meta["language_info"].items() if k != "version"} == {
        "codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py", "mimetype": "text/x-python",
        "name": "python", "nbconvert_exporter": "python", "pygments_lexer": "ipython3"}
    assert meta["language_info"]["version"].count(".") == 2
