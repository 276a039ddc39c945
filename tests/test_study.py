"""fer study on two stand-in notebooks (tests/fixtures/notebooks), and nbval catching a changed output."""
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from fer_lib.cli import main
from fer_lib.study import (CHECK_MARK, StudyError, checked, list_notebooks, parse_overrides, plan_study,
                           read_parameters, write_nbval_refs)

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / "tests" / "fixtures" / "notebooks"


def test_parse_overrides_literals_then_strings():
    got = parse_overrides(["02_train_cnn.epochs=3", "03.lr=1e-3", "02_train_cnn.model=vgg", "05.sizes=[1, 2]",
                           "04.tta=None", "01.source=../x.zip", "02_train_cnn.note='a=b'"])
    assert got == {"02_train_cnn": {"epochs": 3, "model": "vgg", "note": "a=b"}, "03": {"lr": 0.001},
                   "05": {"sizes": [1, 2]}, "04": {"tta": None}, "01": {"source": "../x.zip"}}
    for bad in ("epochs=3", "02.epochs", "02.=3", "02.bad-name=1"):
        with pytest.raises(StudyError, match=re.escape(repr(bad))):
            parse_overrides([bad])


def test_read_parameters_and_a_bad_parameters_cell(tmp_path):
    assert read_parameters(STUBS / "02_use_stub.ipynb") == {
        "profile": "full", "h5_path": "../runs/stub/stub.h5", "run_dir": "../runs/stub/train",
        "report_dir": "../reports/latest", "epochs": None, "fail": False, "storage": "", "wait_s": 0}
    nb = nbformat.read(str(STUBS / "01_make_stub.ipynb"), as_version=4)
    nb.cells[1].source += "\nseed = int('3')  # not a literal"
    nbformat.write(nb, str(tmp_path / "01_bad.ipynb"))
    with pytest.raises(StudyError, match=r"01_bad.ipynb: parameters cell line 5: value is not a literal"):
        read_parameters(tmp_path / "01_bad.ipynb")


def test_plan_wires_declared_parameters_and_rejects_unknown_overrides():
    nbs = list_notebooks(STUBS)
    wiring = dict(profile="smoke", report_dir="/r", work="/w", source="", h5="/w/s.h5", checkpoint="/w/train/best.pt")
    plan = plan_study(nbs, {"02": {"epochs": 3}}, **wiring)
    assert plan == {"01_make_stub": {"profile": "smoke", "report_dir": "/r", "source": "", "h5_path": "/w/s.h5"},
                    "02_use_stub": {"profile": "smoke", "report_dir": "/r", "h5_path": "/w/s.h5",
                                    "run_dir": "/w/train", "epochs": 3}}
    with pytest.raises(StudyError, match=r"02_use_stub has no such parameter"):
        plan_study(nbs, {"02_use_stub": {"epoch": 3}}, **wiring)
    with pytest.raises(StudyError, match=r"no notebook '07'"):
        plan_study(nbs, {"07": {"epochs": 3}}, **wiring)
    assert [p.stem for p in list_notebooks(STUBS, "02")] == ["02_use_stub"]
    with pytest.raises(StudyError, match=r"--only '09': no such notebook"):
        list_notebooks(STUBS, "01,09")


@pytest.fixture(scope="module")
def stub_study(tmp_path_factory):
    """The stand-in study run once through the CLI: (exit code, report dir, work dir)."""
    tmp = tmp_path_factory.mktemp("study")
    code = main(["study", "--notebooks", str(STUBS), "--out", str(tmp / "reports"), "--work", str(tmp / "runs"),
                 "-p", "02_use_stub.epochs=3"])
    return code, tmp / "reports" / "smoke-synthetic", tmp / "runs" / "smoke-synthetic"


def test_study_writes_notebooks_html_manifest_and_index(stub_study):
    code, report, work = stub_study
    assert code == 0
    m = json.loads((report / "manifest.json").read_text())
    assert m["status"] == "ok" and m["profile"] == "smoke" and m["data"]["kind"] == "synthetic"
    assert m["data"]["sha256"] == "synthetic-0" and m["data"]["counts"] == {"train": 21, "val": 14, "test": 14}
    assert [n["name"] for n in m["notebooks"]] == ["01_make_stub", "02_use_stub"]
    assert all(n["status"] == "ok" and n["wall_s"] > 0 for n in m["notebooks"])
    assert m["notebooks"][1]["parameters"]["epochs"] == 3 and m["notebooks"][1]["parameters"]["fail"] is False
    # --work outside the checkout is named $WORK: no folder of this machine in the report, wherever it sits
    assert m["notebooks"][1]["passed"]["run_dir"] == "$WORK/smoke-synthetic/train"
    assert m["work_dir"] == "$WORK/smoke-synthetic" and m["report_dir"] == "$OUT/smoke-synthetic"
    assert m["environment"]["packages"]["torch"].startswith("2.") and m["git"]["commit"]
    assert m["checkpoint"]["path"] == "$WORK/smoke-synthetic/train/made.json"   # synthetic: the models 02 made
    assert m["root"] == "." and not (report / ".fer-study.lock").exists() and not (work / ".fer-study.lock").exists()
    html = (report / "01_make_stub.html").read_text()
    assert "classes: 7" in html and "write_synthetic_h5(" not in html     # outputs shown, code hidden
    executed = nbformat.read(str(report / "02_use_stub.ipynb"), as_version=4)
    assert "epochs: 3 val size: 14" in "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    index = (report / "index.md").read_text()
    assert "**[01_make_stub](01_make_stub.html)**" in index and "SYNTHETIC DATA" in index
    assert "(ok; no summary file)" in index  # the stand-ins write none of the study's summary files
    assert "href='02_use_stub.html'" in (report / "index.html").read_text()


def test_no_report_names_a_folder_of_this_machine(tmp_path):
    """The checkout made relative, --out/--work outside it $OUT/$WORK, a data file outside by name and sha256."""
    data = tmp_path / "elsewhere" / "faces.zip"
    data.parent.mkdir()
    data.write_bytes(b"stands in for FER-2013")
    assert main(["study", "--notebooks", str(STUBS), "--data", str(data), "--out", str(tmp_path / "reports"),
                 "--work", str(tmp_path / "runs"), "--only", "01"]) == 0
    report = tmp_path / "reports" / "smoke-real"
    m = json.loads((report / "manifest.json").read_text())
    assert m["data"]["kind"] == "real" and m["data"]["h5"] == "$WORK/smoke-real/fer2013.h5"  # source: the HDF5's
    assert m["files_outside"] == {"faces.zip": hashlib.sha256(data.read_bytes()).hexdigest()}
    assert m["checkpoint"]["path"].startswith("models/") and m["root"] == "."
    assert m["notebooks"][0]["passed"]["source"] == "faces.zip"
    assert "source: faces.zip" in (report / "01_make_stub.ipynb").read_text()   # a kernel's output too
    absolute = re.compile(r"(?<![\w.~-])/(?:work|root|home|tmp|Users|mnt|opt|var)/")
    for path in sorted(p for p in report.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        for folder in (str(tmp_path), str(ROOT), sys.prefix):
            assert folder not in text, f"{path.name} names {folder}"
        assert not absolute.search(text), f"{path.name}: {absolute.search(text).group(0)}"


def test_failing_notebook_is_named_and_recorded(stub_study, tmp_path, capsys):
    _, report, work = stub_study
    code = main(["study", "--notebooks", str(STUBS), "--out", str(tmp_path), "--work", str(tmp_path), "--run", "bad",
                 "--h5", str(work / "synthetic.h5"), "--only", "02", "-p", "02.fail=True"])
    assert code == 1
    assert "notebook 02_use_stub failed" in capsys.readouterr().err
    m = json.loads((tmp_path / "bad" / "manifest.json").read_text())
    assert m["status"] == "failed" and "02_use_stub" in m["error"] and "stand-in failure requested" in m["error"]
    assert m["notebooks"][0]["status"] == "failed"
    assert "stand-in failure requested" in (tmp_path / "bad" / "02_use_stub.html").read_text()
    assert "**[02_use_stub](02_use_stub.html)** (" in (tmp_path / "bad" / "index.md").read_text()
    assert "(failed; no summary file)" in (tmp_path / "bad" / "index.md").read_text()


def test_code_changed_during_a_study_is_recorded(tmp_path, monkeypatch, capsys):
    from fer_lib import study
    calls = []

    def git_state():  # the code's commit moves after the study started, as when someone commits mid-run
        calls.append(1)
        return {"root": "/src", "commit": "c1" if len(calls) == 1 else "c2", "dirty": False, "changes_sha256": "0"}
    monkeypatch.setattr(study, "describe_git", git_state)
    assert main(["study", "--notebooks", str(STUBS), "--out", str(tmp_path), "--work", str(tmp_path),
                 "--run", "drift", "--h5", str(tmp_path / "s.h5")]) == 0
    assert "WARNING: fer_lib in /src changed since the study started; 02_use_stub" in capsys.readouterr().out
    m = json.loads((tmp_path / "drift" / "manifest.json").read_text())
    assert m["git"]["commit"] == "c1" and m["code_changed"] == ["02_use_stub"]
    assert "git" not in m["notebooks"][0] and m["notebooks"][1]["git"]["commit"] == "c2"
    assert "- code changed during the run: 02_use_stub" in (tmp_path / "drift" / "index.md").read_text()


def test_describe_git_sees_uncommitted_code_but_not_reports(tmp_path, monkeypatch):
    from fer_lib import report
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "fer_lib").mkdir()
    (tmp_path / "fer_lib" / "m.py").write_text("x = 1\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "c"], check=True)
    monkeypatch.setattr(report, "ROOT", tmp_path)
    clean = report.describe_git()
    assert clean["dirty"] is False and len(clean["commit"]) == 40
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "index.md").write_text("a report being written")
    assert report.describe_git() == clean                      # a study writing its report is no code change
    (tmp_path / "fer_lib" / "m.py").write_text("x = 2\n")
    edited = report.describe_git()
    assert edited["dirty"] is True and edited["changes_sha256"] != clean["changes_sha256"]
    (tmp_path / "fer_lib" / "m.py").write_text("x = 3\n")
    assert report.describe_git()["changes_sha256"] != edited["changes_sha256"]   # a second edit is seen too


# ----------------------------------------------------------------------------- nbval regression

def alter_checked_output(path: Path) -> str:
    """Bump the first digit in the first checked output (a class count, a size): what a regression looks like."""
    nb = nbformat.read(str(path), as_version=4)
    for cell in filter(checked, nb.cells):
        for out in cell.outputs:
            key, holder = ("text", out) if "text" in out else ("text/plain", out.get("data", {}))
            text = holder.get(key, "")
            m = re.search(r"\d", text)
            if m:
                holder[key] = text[:m.start()] + str((int(m.group()) + 1) % 10) + text[m.end():]
                nbformat.write(nb, str(path))
                return f"{text!r} -> {holder[key]!r}"
    raise AssertionError(f"{path}: no {CHECK_MARK} cell with a digit in its stored output")


def run_nbval_on_copies(ref: Path, tmp_path: Path) -> tuple[str, str]:
    """pytest --nbval-lax on an unaltered and an altered copy, each at <copy>/tests/nbval/ so that the
    references' ../../runs/nbval paths stay inside tmp_path. Returns (pytest output, what changed)."""
    copies = {}
    for name in ("ok", "bad"):
        copies[name] = tmp_path / name / "tests" / "nbval" / ref.name
        copies[name].parent.mkdir(parents=True)
        shutil.copy(ref, copies[name])
    change = alter_checked_output(copies["bad"])
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", "-rA",
                           str(copies["ok"]), str(copies["bad"])], cwd=tmp_path, capture_output=True, text=True)
    return proc.stdout + proc.stderr, change


def _outcomes(output: str, name: str) -> set:
    return {m.group(1) for m in re.finditer(rf"^(PASSED|FAILED|ERROR) \S*{name}/tests/nbval/\S+", output, re.M)}


def test_nbval_catches_a_changed_checked_output_in_a_stand_in(tmp_path):
    ref = write_nbval_refs(STUBS, tmp_path / "refs" / "tests" / "nbval", only="01")[0]
    assert "classes: 7" in ref.read_text()
    output, change = run_nbval_on_copies(ref, tmp_path)
    assert "7" in change and "8" in change, change
    assert _outcomes(output, "ok") == {"PASSED"}, output
    assert _outcomes(output, "bad") == {"PASSED", "FAILED"}, output


def test_nbval_catches_a_changed_checked_output_in_notebook_01(tmp_path):
    refs = sorted((ROOT / "tests" / "nbval").glob("01_*.ipynb"))
    if not refs:
        pytest.skip("no tests/nbval/01_*.ipynb reference yet (make nbval-refs)")
    output, change = run_nbval_on_copies(refs[0], tmp_path)
    assert _outcomes(output, "ok") == {"PASSED"}, output
    assert "FAILED" in _outcomes(output, "bad"), f"{change}\n{output}"


def test_progress_bars_leave_no_ipywidgets_warning_in_notebooks():
    import nbclient
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import fer_lib.train\nprint('imported')")])
    nbclient.NotebookClient(nb, timeout=120).execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert text == "imported\n"  # no "TqdmWarning: IProgress not found" saved into every notebook


def test_leave_out_faces_strips_face_cells_and_figures(tmp_path):
    from fer_lib.study import FACES_NOTE, leave_out_faces
    faces = nbformat.v4.new_code_cell("show_faces()", id="face-cell", metadata={"tags": ["faces"]})
    other = nbformat.v4.new_code_cell("print(7)", id="other-cell")
    (tmp_path / "src").mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[faces, other]), str(tmp_path / "src" / "04_eval.ipynb"))
    # the executed copy lost the tag (an older run): the cell id from notebooks/ still finds it
    png = {"image/png": "iVBORw0KGgoFACESFACESFACES"}
    run_faces = nbformat.v4.new_code_cell("show_faces()", id="face-cell",
                                          outputs=[nbformat.v4.new_output("display_data", data=png)])
    run_other = nbformat.v4.new_code_cell("print(7)", id="other-cell",
                                          outputs=[nbformat.v4.new_output("stream", name="stdout", text="7\n")])
    report = tmp_path / "report"
    (report / "best").mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[run_faces, run_other]), str(report / "04_eval.ipynb"))
    for name in ("best/gradcam_test.png", "best/confident_mistakes_test.png", "best/confusion_test_counts.png",
                 "05_frames.png"):
        (report / name).write_bytes(b"png")
    (report / "manifest.json").write_text('{"run": "r"}')

    removed = leave_out_faces(report, tmp_path / "src")
    assert removed == ["04_eval.ipynb: cell face-cell", "best/confident_mistakes_test.png", "best/gradcam_test.png",
                       "05_frames.png"]                          # frames of the user's clip too
    nb = nbformat.read(str(report / "04_eval.ipynb"), as_version=4)
    assert [o.get("text") for o in nb.cells[0].outputs] == [FACES_NOTE]
    assert nb.cells[1].outputs[0]["text"] == "7\n"                     # other cells untouched
    assert sorted(p.name for p in (report / "best").iterdir()) == ["confusion_test_counts.png"]
    html = (report / "04_eval.html").read_text()
    assert "FACESFACES" not in html and "Faces left out of this published report" in html
    assert json.loads((report / "manifest.json").read_text())["faces_left_out"] == removed
    assert leave_out_faces(report, tmp_path / "src") == []              # idempotent
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="[an older note]\n")]
    nbformat.write(nb, str(report / "04_eval.ipynb"))
    assert leave_out_faces(report, tmp_path / "src") == ["04_eval.ipynb: cell face-cell"]  # the note is renewed,
    assert json.loads((report / "manifest.json").read_text())["faces_left_out"] == removed  # listed once


def every_file_text(*roots) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for r in roots for p in Path(r).rglob("*") if p.is_file())


def test_a_storage_password_reaches_no_file_and_no_printed_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "")  # restored after the test, whatever the study sets
    secret = "S3cret-Pw"
    url = f"postgresql://fer:{secret}@127.0.0.1:5999/fer"
    monkeypatch.setattr(sys, "argv", ["fer", "study", "-p", f"02_use_stub.storage={url}"])
    code = main(["study", "--notebooks", str(STUBS), "--out", str(tmp_path / "reports"), "--work",
                 str(tmp_path / "runs"), "--run", "pw", "-p", "02_use_stub.epochs=1", "-p", f"02_use_stub.storage={url}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    written = every_file_text(tmp_path / "reports", tmp_path / "runs")
    assert secret not in written + out + err
    executed = nbformat.read(str(tmp_path / "reports" / "pw" / "02_use_stub.ipynb"), as_version=4)
    shown = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    # the notebook gets the URL without its password, and the password through libpq's PGPASSWORD
    assert "storage: postgresql://fer@127.0.0.1:5999/fer | PGPASSWORD set: True" in shown
    assert os.environ["PGPASSWORD"] == secret


def test_mask_url_and_split_url_password():
    from fer_lib.io import mask_url, split_url_password
    assert mask_url("storage postgresql://u:pw@h/db, again postgresql://u:pw@h/db") == \
        "storage postgresql://u:***@h/db, again postgresql://u:***@h/db"
    assert mask_url("postgresql+psycopg2://fer:pw@127.0.0.1:5432/fer") == "postgresql+psycopg2://fer:***@127.0.0.1:5432/fer"
    assert mask_url("sqlite:///x.db and runs/optuna.journal") == "sqlite:///x.db and runs/optuna.journal"
    assert split_url_password("postgresql://u:pw@h:1/db") == ("postgresql://u@h:1/db", "pw")
    assert split_url_password("postgresql://u@h/db") == ("postgresql://u@h/db", None)


def test_time_plan_counts_each_training_step_at_the_measured_speed(monkeypatch):
    """02: every training of the chain (the recipe and each member seed); 03: the search's expected epochs
    under halving, then both references and the best trials at the final budget, at the speed of the recipe
    it searches from; all measured here (issue 34's time plan)."""
    from fer_lib import train
    from fer_lib.profiles import load_profile
    from fer_lib.study import FER2013_COUNTS, time_plan
    monkeypatch.setattr(train, "faces_per_second", lambda cfg: 50.0 if cfg.model == "vgg" else 100.0)
    cfgs = load_profile("full")
    b = dataclasses.replace(cfgs["tune"], timeout=None)
    env = {"cpu": "Some CPU", "cpu_count": 2}
    plan = time_plan({**cfgs, "tune": b}, FER2013_COUNTS, env)
    epoch, small = (28709 / v + 3589 / (3 * v) for v in (50, 100))
    t = cfgs["train"]
    assert (b.n_trials, b.epochs_per_trial, b.min_epochs, b.reduction_factor, b.pruner) == (40, 9, 3, 2, "halving")
    assert (t.model, t.epochs, cfgs["models"].seeds, b.base["model"], b.base["epochs"], b.final_top) == \
        ("vgg", 30, [1, 2], "vgg_small", 18, 2)
    search = 40 * (3 + 3 / 2 + 3 / 4)   # every trial 3 epochs, half of them 3 more, a quarter the last 3
    assert plan["seconds"] == {"02": round(3 * 30 * epoch), "03": round(search * small + (2 + 2) * 18 * small)}
    assert (plan["faces_per_s"], plan["search_faces_per_s"]) == (50.0, 100.0)
    assert "02 about 15.0 h (3 training(s) of 30 epochs of 10 min)" in plan["line"], plan["line"]
    assert plan["line"].startswith("[study] time plan on Some CPU (2 cores, ")
    capped = time_plan({**cfgs, "tune": dataclasses.replace(b, timeout=60)}, FER2013_COUNTS, env)
    assert capped["seconds"]["03"] == round(60 + 4 * 18 * small)
    assert cfgs["tune"].timeout == 6 * 3600   # the full profile's own cap
    # a training kept from another machine and one stopped at epoch 12 (chain.epochs_left) are not planned again
    resumed = time_plan({**cfgs, "tune": b}, FER2013_COUNTS, env, left=[0, 18, 30])
    assert resumed["seconds"]["02"] == round(48 * epoch)
    assert "02 about 8.0 h (3 training(s) of 30 epochs of 10 min, 48 epochs left)" in resumed["line"]


def test_epochs_left_counts_what_each_training_has_still_to_run(tmp_path):
    from fer_lib.chain import epochs_left, training_dir
    from fer_lib.train import TrainConfig
    info = {"source_sha256": "ab" * 32, "ingest_version": 1, "counts": {"train": 10, "val": 5, "test": 5}}
    cfgs = [TrainConfig(epochs=30, seed=s) for s in (0, 1, 2)]
    trainings, kept = tmp_path / "trainings", tmp_path / "kept"
    whole = kept / training_dir(cfgs[0], info, trainings).name
    whole.mkdir(parents=True)
    for name in ("best.pt", "history.json", "config.json"):   # chain.KEPT_FILES
        (whole / name).write_bytes(b"")
    (kept / training_dir(cfgs[2], info, trainings).name).mkdir()   # a kept folder without its files counts not
    stopped = training_dir(cfgs[1], info, trainings)
    stopped.mkdir(parents=True)
    (stopped / "history.json").write_text(json.dumps([{"epoch": e} for e in range(1, 13)]))
    assert epochs_left(cfgs, info, trainings, kept=(kept,)) == [0, 18, 30]
    assert epochs_left(cfgs, info, trainings, kept=()) == [30, 18, 30]


def test_the_front_page_gives_each_step_its_compute_cpu_and_plan(stub_study):
    _, report, _ = stub_study
    m = json.loads((report / "manifest.json").read_text())
    assert set(m["time_plan"]["seconds"]) == {"02", "03"} and m["time_plan"]["faces_per_s"] > 0
    entry = m["notebooks"][1]
    assert entry["cpu"] == m["environment"]["cpu"]
    planned = m["time_plan"]["seconds"]["02"]
    assert f"**[02_use_stub](02_use_stub.html)** ({entry['wall_s']} s on {entry['cpu']}; planned {planned} s)" in \
        (report / "index.md").read_text()


def test_ship_copies_a_finished_runs_models_into_models_checked_by_sha256(tmp_path, tiny_checkpoint, synthetic_h5):
    """fer study --ship: each model the run made, under its profile's name, the file the manifest's sha256
    names; nothing is replaced without --overwrite, a synthetic or unfinished run ships nothing, and --prune
    removes what the study no longer makes."""
    import shutil
    from fer_lib.data import source_sha256
    from fer_lib.errors import UserError
    from fer_lib.study import ship
    work, report, models = tmp_path / "work", tmp_path / "reports" / "full-real", tmp_path / "models"
    made = work / "full-real" / "train"
    made.mkdir(parents=True)
    report.mkdir(parents=True)
    models.mkdir()
    for role in ("single", "live"):
        shutil.copy(tiny_checkpoint, made / f"{role}.pt")
    shutil.copy(synthetic_h5, work / "full-real" / "fer2013.h5")
    (models / "old_model.pt").write_bytes(b"old")
    (models / "old_model.onnx").write_bytes(b"old")
    manifest = {"run": "full-real", "profile": "full", "status": "ok", "notebooks": [],
                "data": {"kind": "real", "h5": "$WORK/full-real/fer2013.h5"},
                "recipe": {"models": {"ship": {"single": "net_fer2013", "live": "net_int8_fer2013"}}},
                "outputs": {r: {"path": f"$WORK/full-real/train/{r}.pt", "sha256": source_sha256(made / f"{r}.pt")}
                            for r in ("single", "live")}}

    def write(**changes):
        (report / "manifest.json").write_text(json.dumps({**manifest, **changes}))
    for bad, why in (({"status": "interrupted"}, "the run is interrupted"),
                     ({"data": {"kind": "synthetic"}}, "synthetic faces ships nothing"),
                     ({"recipe": {"models": {}}}, "names no model to ship")):
        write(**bad)
        with pytest.raises(UserError, match=why):
            ship(report, work, models)
    write()
    with pytest.raises(UserError, match="notebook 04 scored no single model"):
        ship(report, work, models)
    from fer_lib.evaluate import evaluate_checkpoint
    scored = {r: evaluate_checkpoint(made / f"{r}.pt", synthetic_h5, report / r, n_bootstrap=10, figures=False,
                                     progress=False) for r in ("single", "live")}
    (report / "04_evaluate.json").write_text(json.dumps({"models": [{"role": r, "folder": r} for r in scored]}))
    (made / "live.pt").write_bytes(b"changed")   # not the file the run made
    with pytest.raises(UserError, match="not the file the run made"):
        ship(report, work, models)
    assert sorted(p.name for p in models.iterdir()) == ["old_model.onnx", "old_model.pt"]   # nothing copied
    shutil.copy(tiny_checkpoint, made / "live.pt")
    (models / "net_int8_fer2013.onnx").write_bytes(b"stale graph")
    done = ship(report, work, models, overwrite=True)
    assert done["shipped"] == {"single": "models/net_fer2013.pt", "live": "models/net_int8_fer2013.pt"}
    assert (models / "net_fer2013.pt").read_bytes() == tiny_checkpoint.read_bytes()
    assert (models / "net_int8_fer2013.onnx").read_bytes() != b"stale graph"   # made again from the live model
    import onnx
    onnx.checker.check_model(onnx.load(str(models / "net_int8_fer2013.onnx")))
    assert json.loads((report / "manifest.json").read_text())["shipped"] == done["shipped"]
    card = " ".join((models / "net_int8_fer2013.md").read_text().split())   # from notebook 04's metrics
    assert f"accuracy {100 * scored['live']['test']['plain']['accuracy']:.2f}% [95% CI" in card
    assert "shipped by `fer study --ship full-real`" in card and "net_int8_fer2013.onnx" in card
    assert (models / "net_fer2013.md").is_file()
    assert (models / "old_model.pt").exists()   # listed, kept without --prune
    with pytest.raises(UserError, match=r"net_fer2013.pt: exists; pass --overwrite"):
        ship(report, work, models)
    done = ship(report, work, models, overwrite=True, prune=True)
    assert done["removed"] == ["old_model.pt", "old_model.onnx"]
    assert sorted(p.name for p in models.iterdir()) == ["net_fer2013.md", "net_fer2013.pt", "net_int8_fer2013.md",
                                                        "net_int8_fer2013.onnx", "net_int8_fer2013.pt"]


def test_the_full_profile_ships_the_live_model_under_its_name():
    from fer_lib.assets import LIVE_MODEL
    from fer_lib.profiles import load_profile
    ship_names = load_profile("full")["models"].ship
    assert f"models/{ship_names['live']}.pt" == LIVE_MODEL and set(ship_names) == {"single", "ensemble", "live"}


def test_keep_trainings_copies_the_finished_ones_for_another_machine(tmp_path, tiny_checkpoint, synthetic_h5,
                                                                    monkeypatch, capsys):
    from fer_lib import chain
    kept = tmp_path / "kept"
    monkeypatch.setattr(chain, "KEPT", kept)
    assert main(["study", "--keep-trainings", "--work", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "empty/trainings: no trainings there" in err and len(err.splitlines()) == 1
    shutil.copytree(tiny_checkpoint.parent, tmp_path / "work" / "trainings" / "vgg_small-s0-0123456789abcdef")
    from fer_lib import tune
    tune.run_study(str(synthetic_h5), str(tmp_path / "work" / "full-real" / "tune"),
                   tune.TuneConfig(n_trials=0, epochs_per_trial=1, timeout=None), kept=None)   # notebook 03's
    assert main(["study", "--keep-trainings", "--work", str(tmp_path / "work")]) == 0
    trainings, searches = capsys.readouterr().out.splitlines()
    assert trainings == "vgg_small-s0-0123456789abcdef: kept"
    assert searches.startswith("search-") and "full-real/tune/optuna.journal" in searches
    assert (kept / searches.split(":")[0] / tune.JOURNAL).is_file()
    assert sorted(p.name for p in (kept / "vgg_small-s0-0123456789abcdef").iterdir()) == sorted(chain.KEPT_FILES)
    assert main(["study", "--keep-trainings", "--work", str(tmp_path / "work")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "vgg_small-s0-0123456789abcdef: already kept"
