"""The study's front page, built from the committed full study's own files, and paths made relative."""
import json
import re
import subprocess
from pathlib import Path

import pytest

from fer_lib.frontpage import build, relative_paths, relativize_report, run_root

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "reports" / "full-real"
ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:work|root|home|tmp|Users|mnt|opt|var)/|[A-Z]:\\\\")


def test_the_front_page_reads_its_numbers_from_the_run():
    manifest = json.loads((FULL / "manifest.json").read_text())
    md, page = build(FULL, manifest)
    metrics = json.loads(next(FULL.glob("*/metrics.json")).read_text())
    plain = metrics["test"]["plain"]
    lead = md.split("\n\n")[1]
    assert f"{100 * plain['accuracy']:.2f}% on PrivateTest" in lead and metrics["model_name"] in lead
    assert f"{100 * plain['accuracy_ci95'][0]:.2f}%" in lead and "chosen on PublicTest" in lead
    assert "| Challenge winner, Tang 2013 (CNN + linear SVM) | 71.16% |" in md   # published results beside it
    train = json.loads((FULL / "02_train_cnn.json").read_text())
    assert f"{100 * train['best_val_acc']:.2f}% at epoch {train['best_epoch']}" in md
    for nb in manifest["notebooks"]:   # one finding per notebook, linked, with its figure(s), all present
        assert f"**[{nb['name']}]({nb['name']}.html)**" in md
    figures = re.findall(r"<img src='([^']+)'", page)
    assert len(figures) >= 5 and all((FULL / f).is_file() for f in figures)
    assert not ABSOLUTE.search(md) and not ABSOLUTE.search(page)


def committed_reports() -> list[Path]:
    """The report files git tracks: a local study's reports/smoke-*/ (ignored) is no committed report."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "reports"], cwd=ROOT, capture_output=True, check=True,
                               text=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: which reports are committed is unknown")
    return [ROOT / n for n in names if n]


def test_no_machine_path_in_any_committed_report():
    found = []
    paths = committed_reports()
    assert FULL / "manifest.json" in paths
    for path in paths:
        if path.suffix in (".json", ".md", ".html", ".ipynb", ".csv", ".txt"):
            for m in ABSOLUTE.finditer(path.read_text(errors="replace")):
                found.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert not found, found[:10]


def test_relative_paths(tmp_path):
    root = "/w/fullrun"
    text = ('{"h5": "/w/fullrun/runs/study/x.h5", "src": "/w/shared/fer2013/archive.zip", "root": "/w/fullrun", '
            '"other": "/w/fullrun2/y", "work": "/scratch/runs/r/train", "tail": "/x/scratch/runs/r", "keep": "/opt/e"}')
    names = {"/w/shared/fer2013/archive.zip": "archive.zip", "/scratch/runs": "$WORK"}
    assert relative_paths(text, root, names) == (
        '{"h5": "runs/study/x.h5", "src": "archive.zip", "root": ".", "other": "/w/fullrun2/y", '
        '"work": "$WORK/r/train", "tail": "/x/scratch/runs/r", "keep": "/opt/e"}')
    assert run_root({"root": "."}) is None and run_root({"root": "/w/fullrun"}) == "/w/fullrun"  # made relative
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.json").write_text(f'["{tmp_path}/runs/a"]')
    (tmp_path / "r" / "b.png").write_bytes(str(tmp_path).encode())   # figures are not rewritten
    assert relativize_report(tmp_path / "r", tmp_path) == ["a.json"]
    assert (tmp_path / "r" / "a.json").read_text() == '["runs/a"]'


def test_committed_notebook_reports_have_no_blank_outputs():
    """A progress bar that cleared itself is drawn by JupyterLab as an empty stripe; none is kept."""
    import nbformat
    for path in (p for p in committed_reports() if re.fullmatch(r"\d\d_.*\.ipynb", p.name)):
        nb = nbformat.read(str(path), as_version=4)
        blank = [i for i, c in enumerate(nb.cells) for o in c.get("outputs", [])
                 if o.output_type == "stream" and not o.text.strip()]
        assert not blank, f"{path.relative_to(ROOT)}: blank outputs in cells {blank}"
        bars = [i for i, c in enumerate(nb.cells) for o in c.get("outputs", []) if "\r" in o.get("text", "")]
        assert not bars, f"{path.relative_to(ROOT)}: unresolved carriage returns in cells {bars}"


def test_tidy_outputs_keeps_what_a_terminal_shows():
    import nbformat

    from fer_lib.frontpage import tidy_outputs
    out = nbformat.v4.new_output
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [out("stream", name="stderr", text="/x/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please "
                        "update jupyter and ipywidgets.\n  from .autonotebook import tqdm as notebook_tqdm\n"),
                    out("stream", name="stdout", text="plan: 2 epochs\n"),
                    out("stream", name="stderr", text="\repoch 1:  50%|##   |"), out("stream", name="stderr",
                                                                                  text="\repoch 1: 100%|#####|"),
                    out("stream", name="stderr", text="\r" + " " * 20 + "\r"),
                    out("stream", name="stdout", text="epoch 1 acc 0.5\n"),
                    out("stream", name="stderr", text="\r   \r"),
                    out("stream", name="stdout", text="epoch 2 acc 0.6\n"),
                    out("execute_result", data={"text/plain": "42"}, execution_count=1)]
    nb = nbformat.v4.new_notebook(cells=[cell])
    assert tidy_outputs(nb) == 7
    assert [(o.output_type, o.get("text")) for o in cell.outputs] == [
        ("stream", "plan: 2 epochs\nepoch 1 acc 0.5\nepoch 2 acc 0.6\n"), ("execute_result", None)]


def test_the_searchs_recipes_are_named_with_both_scores(tmp_path):
    """Notebook 04 scores notebook 03's choice on PrivateTest (04_tuning.json): the finding says both scores."""
    from fer_lib.frontpage import finding_04
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "metrics.json").write_text(json.dumps(
        {"test": {"plain": {"accuracy": 0.7, "accuracy_ci95": [0.68, 0.72], "macro_f1": 0.6, "ece": 0.05}}}))
    (tmp_path / "04_evaluate.json").write_text(json.dumps({"headline": "single", "models": [
        {"role": "single", "folder": "m"}]}))
    assert "search" not in finding_04(tmp_path, {})[0]
    (tmp_path / "04_tuning.json").write_text(json.dumps({"rows": [
        {"label": "untuned default", "val_accuracy": 0.61, "test_accuracy": 0.6},
        {"label": "search best", "val_accuracy": 0.66, "test_accuracy": 0.655}]}))
    assert finding_04(tmp_path, {})[0].endswith(
        "The search's recipes, chosen on PublicTest, on PrivateTest: untuned default 60.00% (PublicTest 61.00%), "
        "search best 65.50% (PublicTest 66.00%).")


def test_notebook_02s_finding_counts_the_compute_of_reused_trainings(tmp_path):
    """A training reused from an earlier sitting took no time in this run, but its epochs did cost compute."""
    from fer_lib.frontpage import finding_02
    d = {"model": "vgg", "params": 5.74e6, "macs_per_face": 376e6, "epochs_run": 30, "best_val_acc": 0.7,
         "best_epoch": 28, "wall_s": 7000.0, "trainings": [{}, {}, {}],
         "compute_s": {"2-core AMD EPYC (bf16)": 14000.0, "2-core Intel Xeon (fp32)": 13000.0}, "train_pflop": 5.83}
    (tmp_path / "02_train_cnn.json").write_text(json.dumps(d))
    text = finding_02(tmp_path, {})[0]
    assert ("the 3 trainings' epochs took 7.5 h and 5.8 PFLOP of compute (3.9 h on 2-core AMD EPYC (bf16); 3.6 h on 2-core "
            "Intel Xeon (fp32)), 1.9 h of it in this run") in text
    (tmp_path / "02_train_cnn.json").write_text(json.dumps({k: v for k, v in d.items() if k != "compute_s"}))
    assert "for 30 epochs in 117 min;" in finding_02(tmp_path, {})[0]   # an older run's summary
