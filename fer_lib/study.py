"""The whole study as one reproducible run: notebooks 01-05 through papermill, rendered to HTML.

    fer study                                                  # synthetic faces, smoke profile
    fer study --data ../shared/fer2013/archive.zip             # FER-2013, smoke: runs/reports/smoke-real/
    fer study --data ../shared/fer2013/archive.zip --profile full --resume   # continue or start: runs/reports/full-real/
    fer study --data ../shared/fer2013/archive.zip --profile full --publish --resume   # the committed reports/full-real/
    fer study --data archive.zip -p train.epochs=3 -p tune.n_trials=2 --only 01,02,03
    fer study --nbval-refs                                     # regenerate tests/nbval/ (synthetic, smoke)
    fer study --keep-trainings                                 # finished trainings into trainings/, to commit

Each notebook runs with cwd=notebooks/ and absolute paths as parameters. Results for readers go to
runs/reports/<run>/ (executed .ipynb, code-hidden .html, index.html/.md, manifest.json), or to the
committed reports/<run>/ with --publish; an existing report is replaced only with --overwrite, or
continued with --resume. Bulky artifacts (HDF5, checkpoints, Optuna storage) to runs/study/<run>/.
A lock in both folders keeps a second study out while one runs there. Ctrl-C or SIGTERM stops
the kernel, leaves the running notebook under its partial name (.partial-NN_name.ipynb) and
the manifest at "interrupted", with the step and the time.
"""
from __future__ import annotations

import ast
import dataclasses
import datetime
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import weakref
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import nbformat

from .environment import describe_environment
from .errors import UserError
from .frontpage import read_listing, reindex, render_html, tidy_notebook
from .models import LIVE_MODEL
from .io import mask_url, partial_path, pid_alive, split_url_password, write_atomic
from .progress import ENV as PROGRESS_ENV
from .report import describe_data, describe_git

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NBVAL_DIR = ROOT / "tests" / "nbval"
NBVAL_WORK = "../../runs/nbval"                 # the nbval notebooks' data and runs, relative to their folder
COMMITTED_CHECKPOINT = ROOT / LIVE_MODEL
PUBLISHED = ROOT / "reports"                    # the committed reports: written only by fer study --publish
DEFAULT_OUT = "runs/reports"                    # a user's run: its own folder, beside its checkpoints
TRAINED_CHECKPOINT = "train/made.json"          # under WORK/RUN/: the models notebook 02 made (fer_lib.chain)
TRAINED_LIVE = "train/live.pt"                  # ... and the live one of them, which notebook 05 runs
TRAININGS = "trainings"                         # under WORK/: every run's trainings, keyed by recipe and data
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
SYNTHETIC_BANNER = """
==============================================================================
  NO --data GIVEN: this study runs on SYNTHETIC faces, NOT on FER-2013.
  Its numbers only show that the pipeline works; they say nothing about
  facial-expression recognition. Get FER-2013 (Kaggle "FER-2013", the
  image-folder archive.zip; or the original fer2013.csv) and run
      fer study --data path/to/archive.zip --profile smoke
==============================================================================
"""


class StudyError(UserError):
    """A study that cannot run as asked; the message names the option or file (exit 2)."""


class NotebookFailed(RuntimeError):
    """A notebook of the study raised; the message names it, its cell and its report (exit 1)."""


class StudyInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a study: a KeyboardInterrupt, so that papermill and nbclient unwind as
    for Ctrl-C; `step` is the notebook it stopped (exit 128 + the signal's number)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step, self.manifest = signum, None, None


# ----------------------------------------------------------------------------- one study per run folder

LOCK = ".fer-study.lock"


def _read_lock(path: Path):
    """The lock's {host, pid, since}; None when there is none, {} when it is not ours to read."""
    try:
        held = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return held if isinstance(held, dict) else {}


@contextmanager
def lock_run(folder):
    """Hold FOLDER/.fer-study.lock (host and pid) while a study writes there. A second study is refused,
    naming the process that holds it; a lock left by a dead process of this host is taken over."""
    folder = Path(folder)
    lock, me = folder / LOCK, {"host": socket.gethostname(), "pid": os.getpid(), "since": now()}
    tmp = partial_path(lock)
    tmp.write_text(json.dumps(me))
    try:
        for _ in range(5):
            try:
                os.link(tmp, lock)  # atomic: exactly one study creates it, whole
                break
            except FileExistsError:
                held = _read_lock(lock)
            if held is None:
                continue   # released meanwhile
            pid = held.get("pid")
            if held.get("host") == me["host"] and isinstance(pid, int) and pid != me["pid"] and not pid_alive(pid):
                aside = partial_path(lock)
                try:
                    os.rename(lock, aside)  # only one taker can move it
                except FileNotFoundError:
                    continue
                if _read_lock(aside) != held:  # a live study took it over first: give it back
                    os.replace(aside, lock)
                    continue
                aside.unlink()
                print(f"fer study: {folder}: took over the lock of pid {pid}, which no longer runs", flush=True)
                continue
            raise StudyError(f"{folder}: a study is running there (pid {pid} on {held.get('host', '?')}, since "
                             f"{held.get('since', '?')}); wait for it to end, or give another --run"
                             + ("" if held.get("host") in (None, me["host"]) else
                                f" (remove {lock} if no study runs on {held['host']})"))
        else:
            raise StudyError(f"{folder}: could not take {LOCK}: other studies keep taking it")
    finally:
        tmp.unlink(missing_ok=True)
    try:
        yield lock
    finally:
        if _read_lock(lock) == me:
            lock.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- stopping a study

_stopping = threading.Event()     # set by the first SIGINT/SIGTERM: kernels are killed, not asked to stop
_kernels = weakref.WeakSet()      # the kernel managers this process started


@contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM raise StudyInterrupted, once; a second signal while the study winds down (kernel
    killed, manifest written) is ignored, so that nothing is left half-written. A signal the caller ignores
    (nohup, a background job of a script) stays ignored; the handlers are restored on exit."""
    papermill_log = logging.getLogger("papermill")
    level = papermill_log.level

    def handler(signum, frame):
        if not _stopping.is_set():
            _stopping.set()
            # the kernel is killed next: papermill's "Kernel died" is then our doing, not an error to print
            papermill_log.setLevel(logging.CRITICAL)
            raise StudyInterrupted(signum)
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                old[sig] = signal.signal(sig, handler)
    _stopping.clear()
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        papermill_log.setLevel(level)
        _stopping.clear()


_KM_CLASS = None


def kernel_manager_class():
    """papermill's kernel manager, but a stopped study's kernel is killed at once (SIGKILL to its process
    group). The graceful shutdown nbclient asks for interrupts the running cell, then closes the kernel's
    sockets under its reply: the kernel prints ZMQ tracebacks on the study's terminal."""
    global _KM_CLASS
    if _KM_CLASS is None:
        from jupyter_client.manager import AsyncKernelManager

        class StudyKernelManager(AsyncKernelManager):
            async def start_kernel(self, **kw):
                _kernels.add(self)  # a kernel started while the study is stopped is still found and killed
                await super().start_kernel(**kw)

            async def shutdown_kernel(self, now=False, restart=False):
                await super().shutdown_kernel(now=now or _stopping.is_set(), restart=restart)
        _KM_CLASS = StudyKernelManager
    return _KM_CLASS


def kill_kernels() -> int:
    """Kill the kernels this process started that still run (one interrupted while it started is not
    shut down by nbclient); returns how many."""
    from jupyter_core.utils import run_sync
    killed = 0
    for km in list(_kernels):
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)
            killed += 1
    return killed


# ----------------------------------------------------------------------------- notebooks and parameters

def list_notebooks(folder=NOTEBOOKS, only: str | None = None) -> list[Path]:
    """notebooks/NN_*.ipynb in order; `only` = "01,03" or full stems picks some."""
    nbs = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not nbs:
        raise StudyError(f"no NN_name.ipynb notebooks in {folder}")
    if not only:
        return nbs
    picked = []
    for key in (k.strip() for k in only.split(",") if k.strip()):
        hits = [p for p in nbs if key in (p.stem, p.stem[:2])]
        if not hits:
            raise StudyError(f"--only {key!r}: no such notebook; have {[p.stem for p in nbs]}")
        picked += [p for p in hits if p not in picked]
    return sorted(picked)


def read_parameters(nb_path) -> dict:
    """{name: value} of the cell tagged 'parameters' (plain literals); raises naming the culprit."""
    nb = nbformat.read(str(nb_path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise StudyError(f"{nb_path}: expected one cell tagged 'parameters', found {len(cells)}")
    out = {}
    for node in ast.parse(cells[0].source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise StudyError(f"{nb_path}: parameters cell line {node.lineno}: only `name = literal` allowed")
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise StudyError(f"{nb_path}: parameters cell line {node.lineno}: value is not a literal") from None
    return out


def parse_overrides(items) -> dict:
    """["train.epochs=3", "02_train_cnn.run_dir=x"] -> {"train": {"epochs": 3}, "02_train_cnn": {"run_dir": "x"}}.

    A step (train, tune, evaluate, stream, video) sets a recipe field for every notebook that uses the step;
    a notebook (its name or number) sets one of its parameters. Values are Python literals (3, 0.5, None,
    [1, 2], "x"); anything else is taken as a string.
    """
    out: dict = {}
    for item in items or []:
        key, eq, text = item.partition("=")
        nb, dot, name = key.strip().partition(".")
        if not (eq and dot and nb and name.isidentifier()):
            raise StudyError(f"-p {item!r}: expected STEP.FIELD=VALUE or NOTEBOOK.NAME=VALUE, e.g. train.epochs=3")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        out.setdefault(nb, {})[name] = value
    return out


def wire_parameters(prefix: str, profile: str, report_dir: str, work: str, source: str, h5: str,
                    checkpoint: str, video: str | None = None, live: str | None = None,
                    trainings: str | None = None) -> dict:
    """The data wiring of notebook NN: which file each step reads and writes (video None: 05's default;
    live None: 05 runs `checkpoint`; trainings None: WORK/trainings)."""
    per = {"01": {"source": source, "h5_path": h5},
           "02": {"h5_path": h5, "run_dir": f"{work}/train", "trainings_dir": trainings or f"{work}/{TRAININGS}"},
           "03": {"h5_path": h5, "run_dir": f"{work}/tune"},
           "04": {"h5_path": h5, "checkpoint": checkpoint, "tuning": f"{work}/tune/final.json"},  # 03's choice
           "05": {"h5_path": h5, "checkpoint": live or checkpoint, "out_path": f"{work}/overlay.mp4",
                  **({} if video is None else {"source": video})}}
    return {"profile": profile, "report_dir": report_dir, **per.get(prefix, {})}


def plan_study(notebooks, overrides: dict, **wiring) -> dict:
    """{stem: parameters to pass}: the wiring each notebook declares, then the user's overrides. Recipe
    overrides ({step: {field: value}}, checked against the profile's dataclasses) go to every notebook's
    `overrides` parameter."""
    from .profiles import STEPS, load_profile
    plan = {nb.stem: {} for nb in notebooks}
    declared = {nb.stem: read_parameters(nb) for nb in notebooks}
    recipe = {k: v for k, v in overrides.items() if k in STEPS}
    overrides = {k: v for k, v in overrides.items() if k not in STEPS}
    if recipe:
        load_profile(wiring["profile"], recipe)  # an unknown field or a bad value fails here, naming it
        if not any("overrides" in d for d in declared.values()):
            raise StudyError(f"-p {next(iter(recipe))}.*: no notebook in this run takes recipe overrides")
    for key, values in overrides.items():
        stems = [s for s in plan if key in (s, s[:2])]
        if not stems:
            raise StudyError(f"-p {key}.*: no notebook {key!r} in this run; have {list(plan)}")
        unknown = set(values) - set(declared[stems[0]])
        if unknown:
            raise StudyError(f"-p {key}.{sorted(unknown)[0]}: {stems[0]} has no such parameter; "
                             f"it has {sorted(declared[stems[0]])} (a recipe field goes by its step: "
                             f"-p train.{sorted(unknown)[0]}=...)")
    for nb in notebooks:
        wired = wire_parameters(nb.stem[:2], **wiring)
        plan[nb.stem] = {k: v for k, v in wired.items() if k in declared[nb.stem]}
        if recipe and "overrides" in declared[nb.stem]:
            plan[nb.stem]["overrides"] = recipe
        for key, values in overrides.items():
            if key in (nb.stem, nb.stem[:2]):
                plan[nb.stem].update(values)
    return plan


# ----------------------------------------------------------------------------- running and rendering

def partial_notebook(out: Path) -> Path:
    """Where a notebook is written while it runs; one that was stopped stays there."""
    return out.with_name(f".partial-{out.name}")


def execute_notebook(nb: Path, out: Path, parameters: dict, cwd: Path) -> None:
    """papermill into a partial file, renamed when done or failed (its error shown); a stopped notebook
    (KeyboardInterrupt) keeps its partial name, so that it never looks complete."""
    import papermill
    logging.getLogger("papermill").setLevel(logging.ERROR)  # we check parameters; it would warn per notebook
    partial = partial_notebook(out)
    os.environ[PROGRESS_ENV] = "0"  # no one watches a headless kernel's bars; its notebook keeps no empty stripes
    try:
        papermill.execute_notebook(str(nb), str(partial), parameters=parameters, cwd=str(cwd), progress_bar=False,
                                   kernel_manager_class=kernel_manager_class(),
                                   extra_arguments=["--IPKernelApp.log_level=ERROR"])  # no TCP warning per kernel
    except Exception:
        if partial.exists():
            tidy_notebook(partial)
            os.replace(partial, out)
        raise
    tidy_notebook(partial)
    os.replace(partial, out)


# Neither FER-2013 nor a user's video clip may be redistributed, so a report meant for publishing
# (the committed one) leaves their faces out: outputs of the cells tagged FACES_TAG and these figures.
FACES_TAG = "faces"
FACE_FIGURES = ("01_sample_grid.png", "confident_mistakes_*.png", "gradcam_*.png", "05_frames.png")
FACES_NOTE = ("[Faces left out of this published report (fer study --no-faces): FER-2013 and the video clip may "
              "not be redistributed. Run the notebook on your copy to see them.]\n")


def leave_out_faces(report_dir, notebooks_dir=NOTEBOOKS) -> list[str]:
    """Strip the FER-2013 faces from a study report: outputs of cells tagged 'faces' (in the executed
    notebook, or by cell id in notebooks_dir) and the face figures; re-render the HTML. Returns what went."""
    report_dir, removed = Path(report_dir), []
    for nb_path in sorted(report_dir.glob("[0-9][0-9]_*.ipynb")):
        source = Path(notebooks_dir) / nb_path.name
        ids = {c.get("id") for c in nbformat.read(str(source), as_version=4).cells
               if FACES_TAG in c.metadata.get("tags", [])} if source.exists() else set()
        nb = nbformat.read(str(nb_path), as_version=4)
        cells = [c for c in nb.cells if c.cell_type == "code" and c.outputs and
                 (FACES_TAG in c.metadata.get("tags", []) or c.get("id") in ids) and
                 [o.get("text") for o in c.outputs] != [FACES_NOTE]]
        if not cells:
            continue
        for c in cells:
            c.outputs = [nbformat.v4.new_output("stream", name="stdout", text=FACES_NOTE)]
            removed.append(f"{nb_path.name}: cell {c.get('id')}")
        write_atomic(nb_path, nbformat.writes(nb) + "\n")
        render_html(nb_path, nb_path.with_suffix(".html"))
    for pattern in FACE_FIGURES:
        for fig in sorted(report_dir.rglob(pattern)):
            fig.unlink()
            removed.append(str(fig.relative_to(report_dir)))
    manifest = report_dir / "manifest.json"
    if removed and manifest.exists():  # the report says what it no longer shows
        m = json.loads(manifest.read_text())
        m["faces_left_out"] = list(dict.fromkeys(m.get("faces_left_out", []) + removed))  # once each
        write_atomic(manifest, json.dumps(m, indent=2, default=str))
    return removed


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def hide_passwords(overrides: dict) -> dict:
    """Overrides with every URL password taken out (`postgresql://u:pw@h/db` -> `postgresql://u@h/db`)
    and handed to the notebooks' kernels as libpq's PGPASSWORD instead: no password reaches the
    manifest, the executed notebooks, their HTML or a printed line."""
    clean, passwords = {}, set()
    for nb, values in overrides.items():
        clean[nb] = {}
        for key, value in values.items():
            if isinstance(value, str):
                value, password = split_url_password(value)
                if password is not None:
                    passwords.add(password)
            clean[nb][key] = value
    if len(passwords) > 1:
        raise StudyError("-p: several storage URLs with different passwords; give one, or set PGPASSWORD / ~/.pgpass")
    if passwords:
        os.environ["PGPASSWORD"] = passwords.pop()  # the kernels inherit it; libpq reads it
    return clean


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def machine_paths(out_root: Path, work_root: Path, files) -> dict:
    """{absolute path: what the report writes instead}, so that no report names a folder of this machine:
    the checkout is made relative by frontpage.relative_paths; --out and --work outside it become $OUT and
    $WORK; a data file outside them (the archive, a clip) its file name (its sha256 is in the manifest); the
    Python installation, in tracebacks and warnings, $PYTHON; the home folder ~."""
    names = {}
    for folder, name in ((out_root, "$OUT"), (work_root, "$WORK")):
        if not _under(folder, ROOT):
            names.setdefault(str(folder), name)
    for f in files:
        if f and not any(_under(f, Path(k)) for k in (str(ROOT), *names)):
            names[str(f)] = f.name
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        if not _under(Path(prefix), ROOT) and Path(prefix) != Path("/"):
            names.setdefault(prefix, "$PYTHON")
    home = Path.home()
    if home != Path("/") and not _under(ROOT, home):
        names.setdefault(str(home), "~")
    return names


def _clear_report(report_dir: Path) -> None:
    """Everything of an earlier report, but the lock this study holds."""
    for p in report_dir.iterdir():
        if p.name != LOCK:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def run_study(source: str = "", profile: str = "smoke", run: str | None = None, out="runs/reports",
              work="runs/study", h5: str | None = None, overrides: dict | None = None,
              only: str | None = None, notebooks_dir=NOTEBOOKS, video: str | None = None, faces: bool = True,
              resume: bool = False, overwrite: bool = False) -> dict:
    """Run the notebooks in order; write OUT/<run>/ and its manifest; raise StudyError on a failure,
    StudyInterrupted on SIGINT/SIGTERM (the manifest then says "interrupted"). faces=False leaves
    FER-2013's faces out of the report (leave_out_faces), for publishing it.

    A folder that holds a report is replaced only with overwrite; resume continues it at its first
    unfinished notebook (inside notebook 02 and 03 at their last epoch and trial), and refuses a run
    whose profile, recipe, data or code differ from what it started with."""
    if resume and (overwrite or only):
        raise StudyError(f"--resume continues the whole study where it stopped; it takes no "
                         f"{'--overwrite' if overwrite else '--only'}")
    kind = "real" if source else "synthetic"
    run = run or f"{Path(str(profile)).stem}-{kind}"  # a profile may be given as its .yaml file
    report_dir, work_dir = (Path(out) / run).resolve(), (Path(work) / run).resolve()
    if source and not Path(source).exists():
        raise StudyError(f"--data {source}: not found (give FER-2013's archive.zip, image folder or fer2013.csv)")
    source = str(Path(source).resolve()) if source else ""
    h5 = str(Path(h5).resolve()) if h5 else str(work_dir / ("fer2013.h5" if source else "synthetic.h5"))
    # A smoke run's model is minutes old and poor, so on real data 04/05 show the committed one;
    # the full study evaluates what its own notebook 02 trained.
    if source and profile != "full" and COMMITTED_CHECKPOINT.exists():
        checkpoint, why = str(COMMITTED_CHECKPOINT), f"the study's live model ({LIVE_MODEL})"
        live = checkpoint
    else:
        checkpoint, why = str(work_dir / TRAINED_CHECKPOINT), "the models notebook 02 made in this run"
        live = str(work_dir / TRAINED_LIVE)
    notebooks = list_notebooks(notebooks_dir, only)
    overrides = hide_passwords(overrides or {})
    video = str(Path(video).resolve()) if video and not video.isdigit() else video
    plan = plan_study(notebooks, overrides or {}, profile=profile, report_dir=str(report_dir),
                      work=str(work_dir), source=source, h5=h5, checkpoint=checkpoint, video=video, live=live,
                      trainings=str(Path(work).resolve() / TRAININGS))  # shared by the runs in WORK
    inputs = [Path(f) for f in (source, h5, video) if f and not f.isdigit()]  # the files the report names
    names = machine_paths(Path(out).resolve(), Path(work).resolve(), inputs)
    with ExitStack() as held:
        for folder in dict.fromkeys((report_dir, work_dir)):  # before anything there is touched, --only too
            folder.mkdir(parents=True, exist_ok=True)
            held.enter_context(lock_run(folder))
        held.enter_context(stop_on_signals())
        from .data import source_sha256
        from .profiles import STEPS, load_profile
        cfgs = load_profile(profile, {k: v for k, v in overrides.items() if k in STEPS})
        recipe = {step: dataclasses.asdict(cfg) for step, cfg in cfgs.items()}  # the profile and the -p overrides
        # An earlier report is replaced only when asked (--overwrite), or continued (--resume). Neither deletes
        # a run: notebook 02 resumes or returns its finished training of the same configuration and refuses
        # another; notebook 03 resumes its search. A different recipe needs a new --run.
        previous = _read_manifest(report_dir)
        kept = []
        if previous is not None and resume:
            kept = resumable(previous, notebooks, plan, dict(profile=str(profile), recipe=recipe,
                                                            overrides=overrides, data_kind=kind,
                                                            data_sha256=source_sha256(source) if source else None),
                             names)
        elif previous is not None and not overwrite:
            raise StudyError(f"{report_dir}: holds a study report ({previous.get('status')}, started "
                             f"{previous.get('start')}); continue it with --resume, replace it with --overwrite, "
                             f"or give another --run")
        elif previous is not None and not only:
            _clear_report(report_dir)
        if not source:
            print(SYNTHETIC_BANNER, flush=True)
        manifest = {"run": run, "profile": profile, "status": "running", "start": now(), "end": None,
                    "wall_s": None, "data": {"kind": kind, "source": source or None, "h5": h5},
                    "checkpoint": {"path": checkpoint, "why": why}, "root": str(ROOT),
                    "report_dir": str(report_dir), "work_dir": str(work_dir),
                    "argv": [mask_url(a) for a in sys.argv], "overrides": overrides or {}, "recipe": recipe,
                    "git": describe_git(), "environment": describe_environment(), "seeds": {}, "notebooks": [],
                    # the files outside the checkout that the report names by file name only
                    "files_outside": {Path(k).name: source_sha256(k) for k in names
                                      if Path(k) in inputs and Path(k).exists()}}
        if kept:  # the finished notebooks of the stopped run stay as they ran; the rest run now
            manifest.update(start=previous["start"], notebooks=previous["notebooks"][:len(kept)],
                            seeds={k: v for k, v in previous.get("seeds", {}).items() if k in kept},
                            resumed=previous.get("resumed", []) + [{"at": manifest["start"], "kept": kept,
                                                                     "previous_status": previous.get("status")}])
            print(f"[study] resuming {run}: {', '.join(kept)} finished before; "
                  f"{len(notebooks) - len(kept)} to run", flush=True)
        if any(nb.stem[:2] in ("02", "03") for nb in notebooks[len(kept):]):  # the steps that train
            from .chain import epochs_left, member_configs
            from .data import INGEST_VERSION, read_info
            counts = read_info(h5)["counts"] if Path(h5).exists() else FER2013_COUNTS if source else SYNTHETIC_COUNTS
            # the trainings already made (here, or kept from another machine) are not planned again; before
            # notebook 01 has run, FER-2013's data is named as its HDF5 will name it
            info = read_info(h5) if Path(h5).exists() else {"source_sha256": source_sha256(source), "counts": counts,
                                                            "ingest_version": INGEST_VERSION} if source else None
            left = (epochs_left(member_configs(cfgs["train"], cfgs["models"]), info, Path(work).resolve() / TRAININGS)
                    if info else None)
            plan_line = time_plan(cfgs, counts, manifest["environment"], left)
            print(plan_line.pop("line"), flush=True)
            manifest["time_plan"] = plan_line
        t_study, failure, stopped = time.time(), None, None
        try:
            failure = _run_notebooks(notebooks[len(kept):], plan, manifest, report_dir, first=len(kept) + 1,
                                     total=len(notebooks))
        except StudyInterrupted as e:
            stopped = e
            kill_kernels()
            entry = manifest["notebooks"][-1] if manifest["notebooks"] else {"name": None, "status": None}
            e.step, e.manifest = entry["name"], report_dir / "manifest.json"
            if entry["status"] == "running":
                partial = partial_notebook(report_dir / entry["ipynb"])
                started = datetime.datetime.fromisoformat(entry["start"]).timestamp()
                entry.update(status="interrupted", end=now(), wall_s=round(time.time() - started, 1),
                             ipynb=partial.name if partial.exists() else None, html=None)
            manifest["interrupted"] = {"step": e.step, "signal": str(e), "at": now()}
            print(f"[study] {e} during {e.step}: stopped", flush=True)
        if not faces:  # before the manifest's last write, which then keeps the list
            manifest["faces_left_out"] = leave_out_faces(report_dir, notebooks_dir)
        manifest["data"].update(describe_data(h5))
        made = work_dir / TRAINED_CHECKPOINT
        if made.is_file():  # the models notebook 02 made: the ones models/ may ship, each by its sha256
            from .chain import made_models
            try:
                manifest["outputs"] = {role: {"path": str(p), "sha256": source_sha256(p)} for role, p in made_models(made)}
            except UserError as e:
                manifest["outputs"] = {"error": str(e)}
        # wall_s: the compute of every sitting (a resumed run's earlier notebooks keep their own times)
        manifest.update(status="interrupted" if stopped else "failed" if failure else "ok", end=now(),
                        wall_s=round(time.time() - t_study + sum(n.get("wall_s") or 0 for n in
                                                               manifest["notebooks"][:len(kept)]), 1))
        if failure:
            manifest["error"] = failure
        write_atomic(report_dir / "manifest.json", json.dumps(manifest, indent=2, default=str))
        reindex(report_dir, names)  # the front page; no absolute path of this machine left in the report
        if stopped:
            raise stopped
    if not source:
        print(SYNTHETIC_BANNER, flush=True)
    if failure:
        raise NotebookFailed(f"{failure}\n  see {report_dir / (manifest['notebooks'][-1]['name'] + '.html')} "
                             f"and {report_dir / 'manifest.json'}")
    return manifest


FER2013_COUNTS = {"train": 28709, "val": 3589, "test": 3589}
SYNTHETIC_COUNTS = {"train": 7 * 400, "val": 7 * 60, "test": 7 * 60}   # notebook 01's synthetic_per_class


def time_plan(cfgs: dict, counts: dict, env: dict, left: list[int] | None = None) -> dict:
    """The time of the steps that train (02 and 03), from training speeds measured now on this machine (env:
    its describe_environment): {"cpu", "faces_per_s", "seconds": {"02": s, "03": s}, "line": what to print}.
    02 counts the epochs left of each training of the chain (the recipe and each member seed; `left`, from
    chain.epochs_left, else all of them); 03 its search's expected epochs under its pruner (capped by its
    timeout) and its finalists, at the speed of the recipe it searches from."""
    from .chain import member_configs
    from .profiles import format_duration as hours
    from .train import epoch_seconds, faces_per_second, pick_device
    from .tune import expected_epochs, search_recipe
    t, b = cfgs["train"], cfgs["tune"]
    s = search_recipe(t, b)
    speed = faces_per_second(t)
    search_speed = speed if (s.model, s.model_args, s.crop, s.batch_size) == (t.model, t.model_args, t.crop,
                                                                              t.batch_size) else faces_per_second(s)
    n_train = len(member_configs(t, cfgs["models"]))
    epoch = epoch_seconds(speed, counts["train"] * t.train_fraction, counts["val"])
    final_epoch = epoch_seconds(search_speed, counts["train"] * s.train_fraction, counts["val"])
    trial = epoch_seconds(search_speed, counts["train"] * b.train_fraction, counts["val"])
    search_epochs = b.n_trials * expected_epochs(b.pruner, b.epochs_per_trial, b.min_epochs, b.reduction_factor)
    search = search_epochs * trial if b.timeout is None else min(search_epochs * trial, b.timeout)
    final_epochs = (2 + b.final_top) * (b.final_epochs or s.epochs)  # both references and the best trials
    left = [t.epochs] * n_train if left is None else left
    seconds = {"02": sum(left) * epoch, "03": search + final_epochs * final_epoch}
    amp = pick_device(t)[1]
    precision = "fp32" if amp is None else str(amp).replace("torch.", "")
    searched = "" if s.model == t.model else f" of {s.model} at {search_speed:.0f} faces/s"
    done = f", {sum(left)} epochs left" if sum(left) < n_train * t.epochs else ""   # made here or kept
    line = (f"[study] time plan on {env['cpu']} ({env['cpu_count']} cores, {precision}), {speed:.0f} training "
            f"faces/s of {t.model} measured now: 02 about {hours(seconds['02'])} ({n_train} training(s) of "
            f"{t.epochs} epochs of {hours(epoch)}{done}), 03 about {hours(seconds['03'])} (~{search_epochs:.0f} search "
            f"epochs of {hours(trial)}{searched}{', or its timeout' if b.timeout is not None else ''}, "
            f"{final_epochs} finalist epochs); 01, 04 and 05 take minutes; in all about "
            f"{hours(sum(seconds.values()))}. Stopped, `--resume` continues at the unfinished step and epoch.")
    return {"cpu": env["cpu"], "precision": precision, "faces_per_s": round(speed, 1),
            "search_faces_per_s": round(search_speed, 1), "seconds": {k: round(v) for k, v in seconds.items()},
            "line": line}


def _read_manifest(report_dir: Path) -> dict | None:
    path = report_dir / "manifest.json"
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text())
    except ValueError:
        raise StudyError(f"{path}: not a study manifest (unreadable JSON); give another --run or --overwrite") from None
    if not isinstance(m, dict) or not isinstance(m.get("notebooks"), list):
        raise StudyError(f"{path}: not a study manifest; give another --run or --overwrite")
    return m


def resumable(previous: dict, notebooks, plan: dict, now_run: dict, names: dict) -> list[str]:
    """The leading notebooks of a stopped run that a resumed one keeps: those that finished with the same
    parameters. The run must have the same profile, recipe, overrides, data and code, else StudyError:
    a study's numbers come from one recipe on one code."""
    from .frontpage import relative_paths

    def written(x):  # as the manifest wrote it: this machine's paths relative or named (machine_paths)
        return json.loads(relative_paths(json.dumps(x, default=str), ROOT, names))
    git = describe_git()
    was = {"profile": previous.get("profile"), "recipe": previous.get("recipe"),
           "overrides": previous.get("overrides"), "data kind": (previous.get("data") or {}).get("kind"),
           "code": [(previous.get("git") or {}).get(k) for k in ("commit", "changes_sha256")]}
    is_ = {"profile": now_run["profile"], "recipe": written(now_run["recipe"]),
           "overrides": written(now_run["overrides"]), "data kind": now_run["data_kind"],
           "code": [git.get(k) for k in ("commit", "changes_sha256")]}
    differ = [k for k in was if was[k] != is_[k]]
    sha = (previous.get("data") or {}).get("sha256")
    if now_run["data_sha256"] and sha and sha != now_run["data_sha256"]:
        differ.append("data")
    if differ:
        hint = (f" (commit {str(was['code'][0])[:12]}, now {str(is_['code'][0])[:12]})" if "code" in differ else "")
        raise StudyError(f"--resume: the run in {previous.get('report_dir', '?')} was started with another "
                         f"{', '.join(differ)}{hint}; finish it with what it began with, or start again with "
                         f"--overwrite (finished trainings of an unchanged recipe are reused)")
    kept = []
    for nb, entry in zip(notebooks, previous["notebooks"]):
        if entry.get("name") != nb.stem or entry.get("status") != "ok" or entry.get("passed") != written(plan[nb.stem]):
            break
        kept.append(nb.stem)
    return kept


def _run_notebooks(notebooks, plan, manifest, report_dir: Path, first: int = 1, total: int | None = None) -> str | None:
    """Each notebook in turn, recorded in the manifest as it starts and ends; the first failure's line."""
    total = total or len(notebooks)
    for i, nb in enumerate(notebooks, first):
        params = {**read_parameters(nb), **plan[nb.stem]}
        entry = {"name": nb.stem, "status": "running", "passed": plan[nb.stem], "parameters": params,
                 "ipynb": f"{nb.stem}.ipynb", "html": f"{nb.stem}.html", "start": now(),
                 "cpu": manifest["environment"].get("cpu")}  # a resumed study may run its steps on other machines
        manifest["notebooks"].append(entry)
        manifest["seeds"][nb.stem] = {k: v for k, v in params.items() if k == "seed" or k.endswith("_seed")}
        write_atomic(report_dir / "manifest.json", json.dumps(manifest, indent=2, default=str))
        print(f"[study {i}/{total}] {nb.stem} ...", flush=True)
        if i > 1 and (git := describe_git()) != manifest["git"]:
            # Each kernel imports fer_lib afresh: edits made during a long run would go unrecorded.
            entry["git"] = git
            manifest.setdefault("code_changed", []).append(nb.stem)
            print(f"WARNING: fer_lib in {entry['git']['root']} changed since the study started; "
                  f"{nb.stem} runs with different code (recorded in the manifest)", flush=True)
        t0, failure = time.time(), None
        try:
            execute_notebook(nb, report_dir / entry["ipynb"], plan[nb.stem], cwd=nb.parent)
            entry["status"] = "ok"
        except Exception as e:  # papermill's error names the cell; we add the notebook
            entry["status"] = "failed"
            entry["error"] = f"{type(e).__name__}: {getattr(e, 'ename', '')} {getattr(e, 'evalue', e)}".strip()
            cell = f" at cell In[{e.exec_count}]" if getattr(e, "exec_count", None) else ""
            failure = f"notebook {nb.stem} failed{cell}: {entry['error']}"
        entry["end"], entry["wall_s"] = now(), round(time.time() - t0, 1)
        if (report_dir / entry["ipynb"]).exists():
            render_html(report_dir / entry["ipynb"], report_dir / entry["html"])
        print(f"[study {i}/{total}] {nb.stem} {entry['status']} in {entry['wall_s']:.1f} s", flush=True)
        if failure:
            return failure
    return None


# ----------------------------------------------------------------------------- shipping a run's models

def _run_path(path: str, work) -> Path:
    """A path as a manifest wrote it ($WORK/..., or relative to the checkout) on this machine."""
    return Path(work) / path[len("$WORK/"):] if path.startswith("$WORK/") else ROOT / path


def ship(report_dir, work="runs/study", models_dir=None, overwrite: bool = False, prune: bool = False) -> dict:
    """Copy the models a finished run on FER-2013 made into models/, under the names of its profile's
    models.ship, each checked against the sha256 its manifest recorded; the manifest then lists them under
    "shipped". The live model's ONNX graph beside it is made again from it (int8, calibrated on the run's
    Training faces). Every check comes before the first copy. prune: remove the other checkpoints of models/
    (the study no longer makes them), with their ONNX graphs and cards. Returns {"shipped", "removed"}."""
    from .assets import LIVE_MODEL
    from .chain import MADE
    from .data import source_sha256
    from .errors import check_output_path
    rd, models_dir = Path(report_dir), Path(models_dir or ROOT / "models")
    m = _read_manifest(rd)
    if m is None:
        raise StudyError(f"--ship {rd}: no manifest.json there (not a fer study report)")
    if m.get("status") != "ok":
        raise StudyError(f"--ship {rd}: the run is {m.get('status')}; finish it first (--resume)")
    if (m.get("data") or {}).get("kind") != "real":
        raise StudyError(f"--ship {rd}: a run on synthetic faces ships nothing")
    names = ((m.get("recipe") or {}).get("models") or {}).get("ship") or {}
    outputs = m.get("outputs") or {}
    if not names:
        raise StudyError(f"--ship {rd}: profile {m.get('profile')} names no model to ship (its models.ship)")
    plan = {}
    for role in (r for r in MADE if r in names):
        if role not in outputs:
            raise StudyError(f"--ship {rd}: the run made no {role} model (outputs: {sorted(outputs)})")
        src, dst = _run_path(outputs[role]["path"], work), models_dir / f"{names[role]}.pt"
        if not src.is_file() or source_sha256(src) != outputs[role]["sha256"]:
            raise StudyError(f"--ship {rd}: {src} is missing or not the file the run made (sha256 differs)")
        check_output_path(dst, "--ship", overwrite=overwrite)
        check_output_path(dst.with_suffix(".md"), "--ship", overwrite=overwrite)
        plan[role] = (src, dst, _scored(rd, role, outputs[role]["sha256"]))
    h5 = _run_path(str((m.get("data") or {}).get("h5") or ""), work)
    onnx = (models_dir / f"{names['live']}.onnx") if "live" in plan else None
    if onnx is not None and onnx.exists():
        check_output_path(onnx, "--ship", overwrite=overwrite)
        if not h5.is_file():
            raise StudyError(f"--ship {rd}: {h5} (its Training faces calibrate the live ONNX graph) is missing")
    for role, (src, dst, _) in plan.items():
        write_atomic(dst, src.read_bytes())
        print(f"shipped {role}: {dst} (from {outputs[role]['path']})", flush=True)
    if onnx is not None and onnx.exists():
        from .export import calibration_faces, export_onnx, quantize_onnx
        tmp = partial_path(onnx)
        try:
            export_onnx(plan["live"][1], tmp)
            quantize_onnx(tmp, onnx, calibration_faces(h5))
        finally:
            tmp.unlink(missing_ok=True)
        print(f"made again: {onnx} (int8, from {plan['live'][1].name})", flush=True)
    from .report import model_card
    for role, (_, dst, metrics) in plan.items():  # after the ONNX graph, which the card names
        write_atomic(dst.with_suffix(".md"), model_card(dst, metrics, f"shipped by `fer study --ship {rd.name}`"))
    kept = {dst.stem for _, dst, _ in plan.values()}
    stale = [p for p in sorted(models_dir.glob("*.pt")) if p.stem not in kept]
    removed = []
    for p in stale:
        if prune:
            for f in (p, p.with_suffix(".onnx"), p.with_suffix(".md")):
                if f.exists():
                    f.unlink()
                    removed.append(f.name)
        else:
            print(f"not made by this study: {p} (--prune removes it)", flush=True)
    m["shipped"] = {role: f"{models_dir.name}/{dst.name}" for role, (_, dst, _) in plan.items()}
    write_atomic(rd / "manifest.json", json.dumps(m, indent=2, default=str))
    if Path(LIVE_MODEL).name not in {dst.name for _, dst, _ in plan.values()}:
        print(f"note: the live model fer_lib.assets.LIVE_MODEL ({LIVE_MODEL}) is not among them", flush=True)
    return {"shipped": m["shipped"], "removed": removed}


def _scored(rd: Path, role: str, sha256: str) -> Path:
    """notebook 04's metrics.json of the run's ROLE model (its card's numbers), checked to be that file's."""
    listing = read_listing(rd) or {}
    folder = next((x["folder"] for x in listing.get("models", []) if x.get("role") == role), None)
    metrics = rd / str(folder) / "metrics.json"
    if folder is None or not metrics.is_file():
        raise StudyError(f"--ship {rd}: notebook 04 scored no {role} model there (04_evaluate.json)")
    if json.loads(metrics.read_text()).get("checkpoint_sha256") != sha256:
        raise StudyError(f"--ship {rd}: {metrics} scored another file than the run's {role} model")
    return metrics


# ----------------------------------------------------------------------------- nbval references

def checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK)


def write_nbval_refs(notebooks_dir=NOTEBOOKS, out_dir=NBVAL_DIR, only: str | None = None) -> list[Path]:
    """Execute the notebooks (smoke, synthetic) from out_dir with paths relative to it, keep checked outputs.

    nbval starts the kernel in the notebook's folder, so the injected relative paths
    (../../runs/nbval/...) resolve the same when `pytest --nbval-lax tests/nbval` re-runs them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = NBVAL_WORK
    notebooks = list_notebooks(notebooks_dir, only)
    if not only:   # as in a fresh clone: no checkpoint or Optuna journal left from an earlier run
        shutil.rmtree(out_dir / work, ignore_errors=True)
    plan = plan_study(notebooks, {}, profile="smoke", report_dir=f"{work}/reports", work=work,
                      source="", h5=f"{work}/synthetic.h5", checkpoint=f"{work}/{TRAINED_CHECKPOINT}",
                      live=f"{work}/{TRAINED_LIVE}",
                      video="")   # no clip: 05 makes its labelled stream clip, the same on every machine
    written = []
    for i, nb in enumerate(notebooks, 1):
        print(f"[nbval-refs {i}/{len(notebooks)}] {nb.stem} ...", flush=True)
        t0 = time.time()
        ref, new = out_dir / nb.name, out_dir / f".new-{nb.name}"
        try:
            execute_notebook(nb, new, plan[nb.stem], cwd=out_dir)
        except Exception as e:   # the old reference stays as it was
            raise StudyError(f"notebook {nb.stem} failed while making its nbval reference: {e}") from None
        finally:
            ref_nb = nbformat.read(str(new), as_version=4) if new.exists() else None
            new.unlink(missing_ok=True)
        ref_nb.metadata.pop("papermill", None)
        for cell in ref_nb.cells:   # keep what nbval compares; drop timings, figures, logs
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
            if cell.cell_type == "code" and not checked(cell):
                cell.outputs, cell.execution_count = [], None
        write_atomic(ref, nbformat.writes(ref_nb) + "\n")
        written.append(ref)
        print(f"[nbval-refs {i}/{len(notebooks)}] {nb.stem} ok in {time.time() - t0:.1f} s", flush=True)
    return written


# ----------------------------------------------------------------------------- CLI

def add_arguments(p) -> None:
    p.add_argument("--data", default="", metavar="SOURCE",
                   help="FER-2013 archive.zip, image folder or fer2013.csv; none = synthetic faces")
    p.add_argument("--profile", default="smoke", help="configs/profiles/NAME.yaml (smoke, full) or a .yaml file: "
                   "every step's recipe and budget")
    p.add_argument("--run", help="run name (default PROFILE-real or PROFILE-synthetic)")
    p.add_argument("--out", default=DEFAULT_OUT, help="reports go to OUT/RUN/ (default runs/reports: a rerun never "
                   "touches the committed reports/; see --publish)")
    p.add_argument("--publish", action="store_true",
                   help="write the report to the committed reports/RUN/ (FER-2013's faces left out, as --no-faces), "
                        "the study's published copy; with --resume or --overwrite where one is there")
    p.add_argument("--resume", action="store_true",
                   help="continue the report at OUT/RUN at its first unfinished notebook (same profile, recipe, "
                        "data and code), reusing finished trainings")
    p.add_argument("--overwrite", action="store_true", help="replace the report OUT/RUN already holds")
    p.add_argument("--work", default="runs/study", help="HDF5, checkpoints and studies go to WORK/RUN/")
    p.add_argument("--h5", help="where notebook 01 writes (or reuses) the HDF5; default WORK/RUN/")
    p.add_argument("--video", help="clip (or camera index) for notebook 05; default: the notebook's own")
    p.add_argument("-p", "--param", action="append", default=[], metavar="STEP.FIELD=VALUE",
                   help="a recipe field (STEP.FIELD: train, tune, evaluate, stream, video) or a notebook parameter "
                        "(NOTEBOOK.NAME), as a Python literal: -p train.epochs=3, -p 05.source=clip.mp4")
    p.add_argument("--only", help="comma-separated notebooks to run, e.g. 01,02")
    p.add_argument("--notebooks", default=str(NOTEBOOKS), help="folder of NN_name.ipynb notebooks")
    p.add_argument("--no-faces", action="store_true",
                   help="leave FER-2013's faces out of the report (for publishing; the data may not be redistributed)")
    p.add_argument("--leave-out-faces", metavar="REPORT_DIR",
                   help="strip the faces from an existing report (as --no-faces does) instead of a study")
    p.add_argument("--reindex", metavar="REPORT_DIR",
                   help="rebuild an existing report's front page (index.html) and make its paths relative")
    p.add_argument("--ship", metavar="REPORT_DIR",
                   help="copy the models a finished real-data run made into models/ (its profile's models.ship names), "
                        "instead of a study; with --overwrite to replace them, --prune to drop the ones it no longer makes")
    p.add_argument("--prune", action="store_true", help="with --ship: remove the checkpoints of models/ it does not ship")
    p.add_argument("--keep-trainings", action="store_true",
                   help="copy the finished trainings under WORK/trainings and WORK/RUN/tune/final (best.pt without "
                        "optimizer state, history, config) and each run's search journal into the checkout's "
                        "trainings/, to commit: a study on another machine reuses the trainings, continues the searches "
                        "(a kept journal with trials this one lacks is replaced only with --overwrite)")
    p.add_argument("--nbval-refs", action="store_true",
                   help="regenerate the nbval reference notebooks in tests/nbval/ instead of a study")


def run(args) -> int:
    try:
        if args.nbval_refs:
            for ref in write_nbval_refs(args.notebooks, only=args.only):
                print("wrote", ref)
            return 0
        if args.reindex:
            with lock_run(args.reindex) if Path(args.reindex).is_dir() else nullcontext():  # not under a study
                changed = reindex(args.reindex)
            print(f"wrote {Path(args.reindex) / 'index.html'}" + (f"; paths made relative in {len(changed)} files"
                                                                   if changed else ""))
            return 0
        if args.keep_trainings:
            from .chain import KEPT, keep_trainings
            from .tune import JOURNAL, keep_search
            done = keep_trainings(Path(args.work) / TRAININGS, KEPT)
            for tune_dir in sorted(Path(args.work).glob("*/tune")):   # notebook 03's, per run
                done += keep_trainings(tune_dir / "final", KEPT) if (tune_dir / "final").is_dir() else []
                done += keep_search(tune_dir / JOURNAL, KEPT, args.overwrite) if (tune_dir / JOURNAL).is_file() else []
            for name, what in done:
                print(f"{name}: {what}")
            return 0
        if args.ship:
            with lock_run(args.ship) if Path(args.ship).is_dir() else nullcontext():
                done = ship(args.ship, args.work, overwrite=args.overwrite, prune=args.prune)
            for name in done["removed"]:
                print("removed", name)
            return 0
        if args.leave_out_faces:
            with lock_run(args.leave_out_faces) if Path(args.leave_out_faces).is_dir() else nullcontext():
                removed = leave_out_faces(args.leave_out_faces, args.notebooks)
            for what in removed:
                print("left out", what)
            return 0
        if args.publish and args.out != DEFAULT_OUT:
            raise StudyError(f"--publish writes to {PUBLISHED.relative_to(ROOT)}/; it takes no --out")
        out = PUBLISHED if args.publish else args.out
        m = run_study(args.data, args.profile, args.run, out, args.work, args.h5,
                      parse_overrides(args.param), args.only, args.notebooks, args.video,
                      faces=not (args.no_faces or args.publish), resume=args.resume, overwrite=args.overwrite)
    except NotebookFailed as e:
        print(f"fer study: error: {e}", file=sys.stderr)
        return 1
    except StudyInterrupted as e:  # one line, as for any stop; what ran is in the manifest
        where = f"; the manifest says so: {e.manifest}" if e.manifest else ""
        print(f"fer study: interrupted by {e}" + (f" during {e.step}" if e.step else "") + where, file=sys.stderr)
        return 128 + e.signum
    print(f"study {m['run']} ok in {m['wall_s']:.0f} s: {Path(m['report_dir']) / 'index.html'}")
    return 0
