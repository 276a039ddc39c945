"""As a person uses it, in a real headless Chromium (issue 14).

* A notebook is opened in JupyterLab's own UI, run with Run > Run All Cells, saved with File > Save Notebook,
  and must finish with every code cell numbered and no error output. 01_preprocess runs on a tiny
  fer2013.csv made here (84 faces, seconds); a probe notebook with a `1/0` cell proves the error detector
  sees what JupyterLab shows.
* The committed report pages open from file:// as a reader gets them: every <img> loads, and the text
  shows no path of the machine that rendered them.

Needs Debian's chromium (`apt-get install -y chromium`; `FER_CHROMIUM` points at another binary) and the
`playwright` package (in the dev extra; its own browser download is not used). Without either, the tests
skip. `FER_SCREENSHOTS=<dir>` also copies each screenshot there.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_preprocess.ipynb"
REPORT = ROOT / "reports" / "full-real"
REPORT_PAGES = ["index.html", "04_evaluate.html"]
MACHINE_PATH = re.compile(r"(?:/work/|/root/|/home/|/tmp/|\b[A-Za-z]:\\)\S*")

# JupyterLab 4.6 DOM this file relies on (checked against the running UI, see the probe test).
CELL = ".jp-NotebookPanel .jp-Notebook .jp-Cell"
CODE_PROMPT = ".jp-NotebookPanel .jp-Notebook .jp-CodeCell .jp-InputPrompt"     # "[ ]:", "[*]:", "[3]:"
KERNEL_STATUS = '#jp-main-statusbar .jp-StatusBar-TextItem[title^="Change kernel"]'  # "Python 3 (ipykernel) | Idle"
EXEC_INDICATOR = ".jp-NotebookPanel .jp-Notebook-ExecutionIndicator"            # data-status="idle" | "busy"
MENU = "#jp-MainMenu .lm-MenuBar-item"                                          # File, Edit, View, Run, ...
MENU_ITEM = '.lm-Menu-item[data-command="{}"]'
# An exception is rendered as a stderr output holding the traceback; other front ends use the error mime type.
ERROR_OUTPUTS = ('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"], '
                 '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
ERROR_TEXT = r"Traceback \(most recent call last\)|^\s*\w*(Error|Exception): "   # a SyntaxError has no Traceback line


def _chromium() -> str:
    exe = os.environ.get("FER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe and Path("/usr/bin/chromium").exists():
        exe = "/usr/bin/chromium"
    if not exe:
        pytest.skip("no chromium on PATH (apt-get install -y chromium, or set FER_CHROMIUM)")
    return exe


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True)
        try:
            yield b
        finally:
            b.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """A PNG in the test's tmp dir, copied to $FER_SCREENSHOTS when set."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("FER_SCREENSHOTS"):
        out = Path(os.environ["FER_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / path.name)
    return path


# ----------------------------------------------------------------------------- JupyterLab

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET", timeout: float = 5):
    req = urllib.request.Request(base + path, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else None


def write_tiny_fer_csv(path: Path, per_class=(8, 2, 2), seed: int = 0) -> Path:
    """A fer2013.csv (emotion,pixels,Usage): per_class faces of each of the 7 classes in Training,
    PublicTest, PrivateTest; random 48x48 pixels."""
    rng = np.random.default_rng(seed)
    lines = ["emotion,pixels,Usage"]
    for usage, n in zip(("Training", "PublicTest", "PrivateTest"), per_class):
        for label in range(7):
            for _ in range(n):
                lines.append(f"{label},{' '.join(map(str, rng.integers(0, 256, 48 * 48)))},{usage}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def set_parameter(nb_path: Path, name: str, literal: str) -> None:
    """Rewrite `name = ...` in the notebook's parameters cell, keeping the line's comment."""
    import nbformat
    nb = nbformat.read(str(nb_path), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    pattern = re.compile(rf"^{re.escape(name)}\s*=\s*(\"[^\"]*\"|'[^']*'|[^#\n]*?)(\s*#.*)?$", re.M)
    assert pattern.search(cell.source), f"{nb_path.name}: no `{name} = ...` line in the parameters cell"
    cell.source = pattern.sub(lambda m: f"{name} = {literal}{m.group(2) or ''}", cell.source, count=1)
    nbformat.write(nb, str(nb_path))


def write_probe_notebook(path: Path) -> Path:
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("print('fine')"),
                nbformat.v4.new_code_cell("import sys; print('a warning, not an error', file=sys.stderr)"),
                nbformat.v4.new_code_cell("1 / 0"),
                nbformat.v4.new_code_cell("'never runs'")]
    nbformat.write(nb, str(path))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab (the venv's) on a free port over a temporary study folder laid out like the repo
    (notebooks/, data/, reports/), so the notebook's relative default paths land inside it."""
    pytest.importorskip("jupyterlab", reason="jupyterlab not installed (pip install -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "study"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(NOTEBOOK, root / "notebooks" / NOTEBOOK.name)
    write_tiny_fer_csv(root / "data" / "fer2013.csv")
    set_parameter(root / "notebooks" / NOTEBOOK.name, "source", '"../data/fer2013.csv"')
    write_probe_notebook(root / "notebooks" / "probe_error.ipynb")

    # No news / update checks (no network here; no toast over the UI); nothing read from or left in ~.
    settings = tmp / "lab-settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               IPYTHONDIR=str(tmp / "ipython"), MPLCONFIGDIR=str(tmp / "mpl"),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    env.pop("JUPYTER_TOKEN", None)
    token, port = secrets.token_hex(16), _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp / "jupyter.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LanguageServerManager.autodetect=False"]
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"jupyter lab exited ({server.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"jupyter lab not up after 90 s:\n{log.read_text()[-3000:]}"
            try:
                _api(base, token, "/api/status", timeout=2)
                break
            except OSError:
                time.sleep(0.25)
        yield {"base": base, "token": token, "root": root, "log": log}
    finally:
        # Kernels run in their own sessions: shut them down through the API, then the server; kill what is left.
        try:
            for k in _api(base, token, "/api/kernels") or []:
                _api(base, token, f"/api/kernels/{k['id']}", method="DELETE", timeout=15)
            _api(base, token, "/api/shutdown", method="POST", timeout=10)
            server.wait(30)
        except Exception:
            pass
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def _menu(page, menu: str, command: str) -> None:
    page.locator(MENU, has_text=re.compile(rf"^{menu}$")).click()
    page.locator(MENU_ITEM.format(command)).click()


def _saved_counts(path: Path):
    import nbformat
    try:
        return [c.execution_count for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]
    except Exception:       # mid-write
        return None


def run_all_in_lab(browser, lab, rel_path: str, tmp_path: Path, timeout_s: float = 120) -> dict:
    """Open rel_path in JupyterLab, Run > Run All Cells, wait for the kernel to settle, File > Save.
    Returns what the page showed: prompts, error outputs, page errors, and the screenshot path."""
    import nbformat
    n_cells = len(nbformat.read(str(lab["root"] / rel_path), as_version=4).cells)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page_errors = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    shot_name = Path(rel_path).stem
    try:
        # A workspace of its own: JupyterLab would otherwise reopen the notebooks of the previous test beside it.
        workspace = f"{shot_name}-{secrets.token_hex(4)}"
        page.goto(f"{lab['base']}/lab/workspaces/{workspace}/tree/{rel_path}?token={lab['token']}")
        # Open with every cell attached and the notebook's own kernel started and idle.
        page.wait_for_function(
            """([cell, status, n]) => {
                 const s = document.querySelector(status);
                 return document.querySelectorAll(cell).length === n
                        && s && /^Python .*\\|\\s*Idle$/.test(s.textContent.trim());
               }""", arg=[CELL, KERNEL_STATUS, n_cells], timeout=90_000)
        _menu(page, "Run", "runmenu:run-all")
        # Done: some cell numbered, none queued or running ("[*]"), kernel idle. A failing cell leaves the
        # cells after it un-numbered ("[ ]"), which the caller sees in `prompts`.
        page.wait_for_function(
            """([prompt, indicator, status]) => {
                 const ps = [...document.querySelectorAll(prompt)].map(e => e.textContent);
                 const i = document.querySelector(indicator), s = document.querySelector(status);
                 return ps.some(t => /\\d/.test(t)) && !ps.some(t => t.includes('*'))
                        && i && i.dataset.status === 'idle' && s && /\\|\\s*Idle$/.test(s.textContent.trim());
               }""", arg=[CODE_PROMPT, EXEC_INDICATOR, KERNEL_STATUS], timeout=timeout_s * 1000)
        prompts = page.eval_on_selector_all(CODE_PROMPT, "els => els.map(e => e.textContent.trim())")
        errors = page.eval_on_selector_all(
            ERROR_OUTPUTS, """(els, pattern) => els.filter(e => e.dataset.mimeType === 'application/vnd.jupyter.error'
                                                           || new RegExp(pattern, 'm').test(e.innerText))
                                               .map(e => e.innerText)""", ERROR_TEXT)
        _menu(page, "File", "docmanager:save")
        page.wait_for_selector(".lm-TabBar-tab.jp-mod-current:not(.jp-mod-dirty)", state="attached")
        shown = [int(m.group(1)) if (m := re.fullmatch(r"\[(\d+)\]:", p)) else None for p in prompts]
        deadline = time.monotonic() + 30
        while (saved := _saved_counts(lab["root"] / rel_path)) != shown:
            assert time.monotonic() < deadline, f"File > Save wrote execution counts {saved}, the page shows {shown}"
            time.sleep(0.2)
        shot = screenshot(page, tmp_path, shot_name)
        return {"prompts": prompts, "errors": errors, "page_errors": page_errors, "screenshot": shot}
    except Exception:
        try:
            screenshot(page, tmp_path, shot_name + "-failed")
        finally:
            print(f"jupyter log tail:\n{lab['log'].read_text()[-3000:]}\npage errors: {page_errors}")
        raise
    finally:
        page.close()


def test_01_preprocess_runs_clean_in_jupyterlab(browser, lab, tmp_path):
    rel = f"notebooks/{NOTEBOOK.name}"
    shown = run_all_in_lab(browser, lab, rel, tmp_path)
    assert not shown["errors"], f"{NOTEBOOK.name}: error output(s) in JupyterLab:\n" + "\n---\n".join(shown["errors"])
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in shown["prompts"]), \
        f"{NOTEBOOK.name}: code cells not all executed: {shown['prompts']} (screenshot {shown['screenshot']})"
    # What the UI saved agrees, and the notebook wrote its files where its relative defaults point.
    import nbformat
    saved = [c for c in nbformat.read(str(lab["root"] / rel), as_version=4).cells if c.cell_type == "code"]
    assert all(c.execution_count for c in saved), "saved notebook: code cell(s) without an execution count"
    assert not [o for c in saved for o in c.outputs if o.output_type == "error"], "saved notebook: error outputs"
    summary = json.loads((lab["root"] / "reports" / "latest" / "data_summary.json").read_text())
    assert summary["synthetic"] is False and summary["counts"] == {"train": 56, "val": 14, "test": 14}, summary
    assert (lab["root"] / "data" / "fer2013.h5").exists()


def test_the_error_detector_sees_a_failing_cell(browser, lab, tmp_path):
    """The selectors above are not vacuous: JupyterLab's rendering of `1 / 0` is caught, the stderr
    warning is not, and the cell after the failure is left unrun."""
    shown = run_all_in_lab(browser, lab, "notebooks/probe_error.ipynb", tmp_path, timeout_s=60)
    assert len(shown["errors"]) == 1 and "ZeroDivisionError" in shown["errors"][0], shown["errors"]
    assert shown["prompts"][:3] == ["[1]:", "[2]:", "[3]:"] and not re.search(r"\d", shown["prompts"][3]), shown


# ----------------------------------------------------------------------------- the committed report

def open_report_page(browser, name: str, tmp_path: Path):
    """The page from file:// with the network cut (a reader may be offline): returns (page, blocked urls)."""
    path = REPORT / name
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    blocked = []

    def only_local(route):
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(path.as_uri(), wait_until="load")
    # Lazy images load only near the viewport; a reader scrolls, the test asks for them all now.
    page.evaluate("() => document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    screenshot(page, tmp_path, "report-" + Path(name).stem)
    return page, blocked


@pytest.mark.parametrize("name", REPORT_PAGES)
def test_report_page_images_all_load(browser, name, tmp_path):
    page, blocked = open_report_page(browser, name, tmp_path)
    try:
        images = page.evaluate("""() => [...document.images].map(i => ({
                                      src: i.getAttribute('src') || '', w: i.naturalWidth, h: i.naturalHeight}))""")
        broken = [(im["src"][:80], im["w"], im["h"]) for im in images if not (im["w"] > 0 and im["h"] > 0)]
        assert not broken, f"{name}: {len(broken)} of {len(images)} image(s) did not load: {broken}"
        remote = [u for u in blocked if re.search(r"\.(png|jpe?g|gif|svg|webp)(\?|$)", u, re.I)]
        assert not remote, f"{name}: images from the network (a reader offline sees none): {remote}"
    finally:
        page.close()


@pytest.mark.parametrize("name", REPORT_PAGES)
def test_report_page_text_has_no_machine_paths(browser, name, tmp_path):
    page, _ = open_report_page(browser, name, tmp_path)
    try:
        text = page.evaluate("() => document.body.innerText")
    finally:
        page.close()
    found = sorted({m.rstrip(".,;:)]'\"") for m in MACHINE_PATH.findall(text)})
    assert not found, (f"{name}: the rendered page shows {len(found)} absolute path(s) of the machine that made "
                       f"it (readers want repo-relative ones): {found}")
