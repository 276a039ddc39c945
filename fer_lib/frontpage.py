"""The study's front page, reports/<run>/index.html (and index.md): what a reader opens first.

    fer study --reindex reports/full-real     # rebuild it (and make every path relative) from a finished run

Like a paper's first page: the headline (the model's PrivateTest accuracy with its interval, beside the
published results and their protocols), one finding per notebook with its key figure, linked to the
notebook's page, and a short provenance block. Every number is read from a file the notebooks wrote;
every path is relative, so the page opens from disk, without a server, on any machine.
"""
from __future__ import annotations

import csv
import html
import json
import logging
import re
from pathlib import Path

import nbformat

from .errors import UserError
from .io import write_atomic
from .profiles import format_duration
from .stream import FACES_TO_JUDGE

TEXT_SUFFIXES = (".json", ".md", ".html", ".ipynb", ".csv", ".txt")


# ----------------------------------------------------------------------------- relative paths

def relative_paths(text: str, root, names: dict | None = None) -> str:
    """`text` with every absolute path under `root` (the checkout that made the run) written relative to it,
    and each path in `names` ({absolute path: what to write}, e.g. {"/data/archive.zip": "archive.zip"}) as
    named there, the longest first: `/w/repo/runs/x.h5` -> `runs/x.h5`, the root itself `.`."""
    names = {**(names or {}), **({str(Path(root)): "."} if root else {})}
    for prefix in sorted(names, key=len, reverse=True):
        if prefix in ("", "/"):
            continue
        to = names[prefix]
        start = r"(?<![\w.-])" + re.escape(prefix)   # a whole path, not the tail of a longer one
        text = re.sub(start + "/", lambda m: "" if to == "." else to + "/", text)
        text = re.sub(start + r"(?![\w.-])", lambda m: to, text)
    return text


def relativize_report(report_dir, root, names: dict | None = None) -> list[str]:
    """Rewrite the report's text files (manifest, JSON, executed notebooks, CSV) so that no absolute path
    of `root` (the run's checkout) or of `names` remains (relative_paths); returns the files changed."""
    changed = []
    for path in sorted(Path(report_dir).rglob("*")):
        if path.suffix in TEXT_SUFFIXES and path.is_file():
            old = path.read_text(errors="surrogateescape")
            new = relative_paths(old, root, names)
            if new != old:
                write_atomic(path, new.encode(errors="surrogateescape"))
                changed.append(path.relative_to(report_dir).as_posix())
    return changed


def run_root(manifest: dict):
    """The checkout a run was made in, if the report still names it: recorded by fer study (until its paths
    were made relative, "."), or the report folder's grandparent."""
    root = manifest.get("root")
    if root:
        return root if Path(root).is_absolute() else None
    rd = manifest.get("report_dir") or ""
    return str(Path(rd).parents[1]) if Path(rd).is_absolute() and len(Path(rd).parts) > 2 else None


# ----------------------------------------------------------------------------- executed notebooks

# stderr that reports no trouble of the run: tqdm's notice that ipywidgets is absent (text bars are what a
# saved notebook wants; fer_lib silences it since 2026-11-27, runs before that still carry it)
NOISE = ("TqdmWarning: IProgress not found",)


def _noise(o) -> bool:
    return o.name == "stderr" and any(n in o.text for n in NOISE) and len(o.text.strip().splitlines()) <= 3


def tidy_outputs(nb) -> int:
    """Keep what a terminal would show: consecutive stream outputs merged, each line's carriage-return
    rewrites resolved (a progress bar leaves its last state), and outputs left blank (bars that cleared
    themselves, drawn as empty stripes) or holding only a known harmless notice (NOISE) dropped. Changes nb
    in place; returns how many outputs went."""
    before = sum(len(c.get("outputs", [])) for c in nb.cells)
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for _ in range(2):  # again once the blanks between two outputs of one stream are gone
            merged = []
            for o in c.outputs:
                if (o.output_type == "stream" and merged and merged[-1].output_type == "stream"
                        and merged[-1].name == o.name):
                    merged[-1].text += o.text
                else:
                    merged.append(o)
            for o in merged:
                if o.output_type == "stream":
                    o.text = "\n".join(line.rsplit("\r", 1)[-1] for line in o.text.split("\n"))
            c.outputs = [o for o in merged if o.output_type != "stream" or (o.text.strip() and not _noise(o))]
    return before - sum(len(c.get("outputs", [])) for c in nb.cells)


def tidy_notebook(path) -> bool:
    """tidy_outputs on an executed notebook file; rewritten (and True) only if that changed something."""
    nb = nbformat.read(str(path), as_version=4)
    old = nbformat.writes(nb)
    tidy_outputs(nb)
    new = nbformat.writes(nb)
    if new != old:
        write_atomic(path, new + "\n")
    return new != old


def render_html(ipynb: Path, out: Path) -> None:
    """The reader's version: outputs and narrative, code hidden."""
    from nbconvert import HTMLExporter
    logging.getLogger("traitlets").setLevel(logging.ERROR)  # per-figure "alternative text is missing" warnings
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_filename(str(ipynb))
    write_atomic(out, body)


# ----------------------------------------------------------------------------- what each notebook found

def _json(report_dir: Path, *names):
    for name in names:
        hits = sorted(report_dir.glob(name))
        if hits:
            try:
                return json.loads(hits[0].read_text()), hits[0].relative_to(report_dir).as_posix()
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass
    return None, None


def _figs(report_dir: Path, *names) -> list[str]:
    return [p.relative_to(report_dir).as_posix() for n in names for p in sorted(report_dir.glob(n))[:1]]


def _pct(x) -> str:
    return f"{100 * x:.2f}%"


def read_listing(report_dir: Path) -> dict | None:
    """notebook 04's 04_evaluate.json: every model it evaluated and which one is the headline (None before it)."""
    listing, _ = _json(report_dir, "04_evaluate.json")
    return listing if isinstance(listing, dict) else None


def _metrics(report_dir: Path, listing: dict | None):
    """notebook 04's metrics.json of its headline model (listing: 04_evaluate.json, which names it; a report
    from before it has one checkpoint's subfolder) and that folder; (None, None) if there is none with a plain
    PrivateTest row."""
    folder = next((x.get("folder") for x in listing.get("models", []) if x.get("role") == listing.get("headline")),
                  None) if listing else None
    data, rel = _json(report_dir, f"{folder}/metrics.json") if folder else _json(report_dir, "*/metrics.json", "metrics.json")
    plain = ((data or {}).get("test") or {}).get("plain") if isinstance((data or {}).get("test"), dict) else None
    if not isinstance(plain, dict) or not {"accuracy", "accuracy_ci95"} <= set(plain):
        return None, None
    return data, str(Path(rel).parent)


def _others(report_dir: Path, listing: dict | None) -> str:
    """' Beside it on PrivateTest: live `vgg` 69.1%, ...': the other models 04 evaluated, and the live model's
    speed from 05."""
    if not listing:
        return ""
    video, _ = _json(report_dir, "05_video.json")
    parts = []
    for x in listing.get("models", []):
        if x.get("role") == listing.get("headline"):
            continue
        part = f"{x['role']} `{x['model_name']}` {_pct(x['test_accuracy'])}"
        if x["role"] == "live" and video:
            part += f", {video['fps']:.0f} frames/s ({video['realtime_factor']:.1f}x real time) in notebook 05's video"
        parts.append(part)
    return f" Beside it on PrivateTest: {'; '.join(parts)}." if parts else ""


def finding_01(rd: Path, m: dict):
    d, _ = _json(rd, "data_summary.json")
    if not d:
        return None
    c, names, cc = d["counts"], d["class_names"], d["class_counts"]["train"]
    share = {n: k / sum(cc) for n, k in zip(names, cc)}
    big, small = max(share, key=share.get), min(share, key=share.get)
    kind = "synthetic faces" if d.get("synthetic") else f"FER-2013 ({Path(str(d.get('source'))).name})"
    return (f"Read {c['train']:,} Training, {c['val']:,} PublicTest and {c['test']:,} PrivateTest faces from {kind} "
            f"into one HDF5 file. The classes are far from balanced: {big} is {share[big]:.0%} of Training, "
            f"{small} {share[small]:.1%}, which is why notebook 04 reports per-class metrics.",
            _figs(rd, "01_class_balance.png"))


def finding_02(rd: Path, m: dict):
    d, _ = _json(rd, "02_train_cnn.json")
    if not d:
        return None
    spent = d.get("compute_s")   # every epoch's time, on each machine (a study may span several)
    if spent:
        n = len(d.get("trainings") or [0])
        flop = f" and {d['train_pflop']:.1f} PFLOP" if d.get("train_pflop") is not None else ""
        took = (f"; the {n} trainings' epochs took {format_duration(sum(spent.values()))}{flop} of compute ("
                + "; ".join(f"{format_duration(v)} on {k}" for k, v in spent.items())
                + f"), {format_duration(d['wall_s'])} of it in this run")
    else:   # a run made before compute_s was recorded
        took = f" in {d['wall_s'] / 60:.0f} min"
    return (f"Trained `{d['model']}` ({d['params'] / 1e6:.2f} M parameters, {d['macs_per_face'] / 1e6:.0f} M "
            f"multiply-adds per face) for {d['epochs_run']} epochs{took}; the checkpoint "
            f"kept is the best on PublicTest: {_pct(d['best_val_acc'])} at epoch {d['best_epoch']}.",
            _figs(rd, "02_training_curves.png"))


def finding_03(rd: Path, m: dict):
    d, _ = _json(rd, "03_optuna.json")
    if not d:
        return None
    s = d.get("search", {})
    text = (f"{d['n_trials']} Optuna trials ({d['n_pruned']} pruned), each up to {s.get('epochs_per_trial')} epochs "
            f"on {s.get('train_fraction', 1):.0%} of Training, scored on PublicTest: the best reached "
            f"{_pct(d['best_value'])} (trial {d['best_trial']})")
    default = d.get("default_trial") or {}
    if default.get("value") is not None:
        gain = 100 * (d["best_value"] - default["value"])
        text += f", {gain:+.2f} points over the untuned default (trial {default.get('number', 0)}) at that budget"
    final = d.get("final") or {}
    rows = {r["trial"]: r for r in final.get("finalists", [])}
    if final.get("chosen") in rows:  # the finalists retrained at the final budget
        chosen, rho = rows[final["chosen"]], final.get("spearman_proxy_final")
        text += (f". Retrained at {final['final_budget']['epochs']} epochs, {len(rows)} finalists ranked "
                 + ("as in the search" if rho == 1 else f"with Spearman {rho:+.2f} against the search"
                    if rho is not None else "too few to correlate")
                 + f"; chosen on PublicTest: {chosen['role']} (trial {chosen['trial']}, "
                   f"{_pct(chosen['final_val_acc'])})")
    else:
        text += " (whether it holds at the full budget: the finalists retrained by notebook 03, scored by 04)"
    return text + ".", _figs(rd, "03_optimization_history.png", "03_transfer.png")


def finding_04(rd: Path, m: dict):
    d, folder = _metrics(rd, read_listing(rd))
    if not d:
        return None
    t = d["test"]["plain"]
    text = (f"On PrivateTest, scored once: {_pct(t['accuracy'])} accuracy (95% CI {_pct(t['accuracy_ci95'][0])} to "
            f"{_pct(t['accuracy_ci95'][1])}), macro F1 {t['macro_f1']:.3f}, calibration error {t['ece']:.3f}")
    tta = [f"{mode} {_pct(v['accuracy'])}" for mode, v in d["test"].items() if mode != "plain"]
    text += (f"; with test-time augmentation: {', '.join(tta)}." if tta else ".")
    report = t.get("report") or {}  # scikit-learn's classification_report, per class
    recalls = {k: v["recall"] for k, v in report.items() if k in d.get("class_names", []) and "recall" in v}
    if recalls:
        lo, hi = min(recalls, key=recalls.get), max(recalls, key=recalls.get)
        text += f" Recall ranges from {recalls[lo]:.0%} ({lo}) to {recalls[hi]:.0%} ({hi})."
    tuning, _ = _json(rd, "04_tuning.json")
    if tuning and tuning.get("rows"):  # notebook 03's choice, scored here once
        text += (" The search's recipes, chosen on PublicTest, on PrivateTest: "
                 + ", ".join(f"{r['label']} {_pct(r['test_accuracy'])} (PublicTest {_pct(r['val_accuracy'])})"
                             for r in tuning["rows"]) + ".")
    return text, _figs(rd, f"{folder}/confusion_test_normalized.png")


def finding_05(rd: Path, m: dict):
    v, _ = _json(rd, "05_video.json")
    s, _ = _json(rd, "05_smoothers.json")
    if not v:
        return None
    text = (f"The overlay ran at {v['fps']:.1f} frames per second, {v['realtime_factor']:.2f}x real time, on "
            f"{Path(str(v['source'])).name} ({v['frames']} frames, {v['tracks']} face tracks)")
    chosen = (v.get("config") or {}).get("smoother") or ""
    rows = (s or {}).get("rows", [])
    row = next((r for r in rows if r["smoother"].split(" ")[0] == chosen), None)
    raw = next((r for r in rows if r["smoother"] == "raw"), None)
    if row and raw:
        split = {"test": "PrivateTest", "val": "PublicTest"}.get(s.get("split"), s.get("split"))
        n_faces = (s.get("stream") or {}).get("n_runs")
        text += (f". On a labelled stream of {n_faces} {split} faces its {chosen} smoother cuts label switches "
                 f"{row['switch_cut']:.1f}x, per-frame accuracy {_pct(raw['accuracy'])} raw and "
                 f"{_pct(row['accuracy'])} shown, median delay {row['median_delay']:g} frames")
        if n_faces and n_faces < FACES_TO_JUDGE:
            text += " (too few faces to judge a smoother: a smoke run shows that the code runs)"
    return text + ".", _figs(rd, "05_speed.png", "05_stream_labels.png")


FINDINGS = {"01": finding_01, "02": finding_02, "03": finding_03, "04": finding_04, "05": finding_05}


def headline(rd: Path, m: dict):
    """(sentence, published-results rows) from notebook 04's files, or None."""
    listing = read_listing(rd)
    d, folder = _metrics(rd, listing)
    if not d:
        return None
    t = d["test"]["plain"]
    lo, hi = t["accuracy_ci95"]
    which = (m.get("checkpoint") or {}).get("why")
    role = f"the {listing['headline']} model, best on PublicTest, of " if listing else ""
    text = (f"`{d['model_name']}`{f' ({role}{which})' if which else ''} scores {_pct(t['accuracy'])} on PrivateTest "
            f"(95% CI {_pct(lo)} to {_pct(hi)}), trained on Training, its checkpoint chosen on PublicTest, "
            "PrivateTest read once at the end." + _others(rd, listing))
    rows = []
    table = rd / "published_results.csv"   # notebook 04's, one row per model; before it, in the model's folder
    table = table if table.exists() else rd / folder / "published_results.csv"
    if table.exists():
        with open(table, newline="") as f:
            rows = list(csv.reader(f))
    return text, rows


# ----------------------------------------------------------------------------- the page

def _provenance(m: dict) -> list[tuple[str, str]]:
    data, git, env = m.get("data", {}), m.get("git", {}), m.get("environment", {})
    flags = ", ".join(env.get("cpu_flags") or []) or ("bf16" if env.get("cpu_bf16") else "")
    facts = [("run", f"{m['run']} (profile {m['profile']}), {m['status']}"),
             ("code", f"commit {str(git.get('commit'))[:12]}" + (" with uncommitted changes" if git.get("dirty") else "")),
             ("data", f"{data.get('kind')}: {Path(str(data.get('source'))).name if data.get('source') else 'synthetic faces'}"
                      f", sha256 {str(data.get('sha256'))[:16]}..."),
             ("machine", f"{env.get('cpu')}, {env.get('cpu_count')} cores, torch {env.get('torch_threads')} threads"
                         + (f" ({flags})" if flags else "") + f", {env.get('device')}"),
             ("started", f"{m['start']}, {m['wall_s']} s in all")]
    if m.get("code_changed"):
        facts.append(("code changed during the run", ", ".join(m["code_changed"])))
    if m.get("error"):
        facts.append(("error", m["error"]))
    if m.get("interrupted"):
        i = m["interrupted"]
        facts.append(("interrupted", f"by {i.get('signal')} during {i.get('step')} at {i.get('at')}"))
    return facts


def compute(nb: dict, m: dict) -> str:
    """'412 s on <cpu>; planned 380 s': the compute a notebook took, where, and the study's plan for it."""
    text = f"{nb.get('wall_s', '?')} s"
    cpu = nb.get("cpu") or (m.get("environment") or {}).get("cpu")
    planned = ((m.get("time_plan") or {}).get("seconds") or {}).get(nb["name"][:2])
    return text + (f" on {cpu}" if cpu else "") + (f"; planned {planned} s" if planned is not None else "")


def build(report_dir, manifest: dict) -> tuple[str, str]:
    """(index.md, index.html) for a finished or failed run."""
    rd, m, e = Path(report_dir), manifest, html.escape
    synthetic = m.get("data", {}).get("kind") == "synthetic"
    warn = ("SYNTHETIC DATA, NOT FER-2013. These numbers only show that the pipeline runs; rerun with "
            "`fer study --data path/to/archive.zip`.") if synthetic else ""
    head = headline(rd, m)
    found = []
    for nb in m["notebooks"]:
        nb = {**nb, "html": nb.get("html") or nb.get("ipynb") or "manifest.json"}  # a stopped one: its partial
        f = FINDINGS.get(nb["name"][:2])
        got = f(rd, m) if f and nb["status"] == "ok" else None
        found.append((nb, got))

    md = [f"# FER-2013 study: {m['run']}", ""] + ([f"> **{warn}**", ""] if warn else [])
    if head:
        md += [head[0], ""]
        if head[1]:
            md += ["| " + " | ".join(head[1][0]) + " |", "|" + "---|" * len(head[1][0])]
            md += ["| " + " | ".join(r) + " |" for r in head[1][1:]] + [""]
    md += ["## What each notebook found", ""]
    for nb, got in found:
        line = got[0] if got else f"({nb['status']}; no summary file)"
        md += [f"**[{nb['name']}]({nb['html']})** ({compute(nb, m)}). {line}", ""]
        md += [f"![{fig}]({fig})" for fig in (got[1] if got else [])] + ([""] if got and got[1] else [])
    md += ["## Provenance", ""] + [f"- {k}: {v}" for k, v in _provenance(m)]
    md += ["- every parameter, package version and seed: [manifest.json](manifest.json)", ""]

    code = lambda s: re.sub(r"`([^`]+)`", r"<code>\1</code>", e(s))  # noqa: E731
    page = [f"<!doctype html><html lang='en'><meta charset='utf-8'><title>FER-2013 study: {e(m['run'])}</title>",
            "<style>body{font-family:system-ui,sans-serif;max-width:62em;margin:2em auto;padding:0 1em;"
            "line-height:1.45;color:#222}h1{margin-bottom:.2em}.lead{font-size:1.25em}table{border-collapse:collapse;"
            "margin:.6em 0}td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
            ".warn{background:#fdd;padding:1em;font-weight:bold}section{margin:1.6em 0;padding-top:.4em;"
            "border-top:1px solid #eee}figure{display:inline-block;margin:.4em 1em .4em 0}figure img{max-width:29em;"
            "width:100%;height:auto;border:1px solid #eee}.prov td:first-child{color:#666;white-space:nowrap}"
            "</style>", f"<h1>FER-2013 study: {e(m['run'])}</h1>"]
    if warn:
        page.append(f"<p class='warn'>{code(warn)}</p>")
    if head:
        page.append(f"<p class='lead'>{code(head[0])}</p>")
        if head[1]:
            page.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in head[1][0]) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in head[1][1:]) + "</table>")
    page.append("<h2>What each notebook found</h2>")
    for nb, got in found:
        link = f"<a href='{e(nb['html'])}'>{e(nb['name'])}</a>"
        text = code(got[0]) if got else e(f"({nb['status']}; no summary file)")
        figs = "".join(f"<figure><a href='{e(nb['html'])}'><img src='{e(f)}' alt='{e(f)}'></a></figure>"
                       for f in (got[1] if got else []))
        page.append(f"<section><h3>{link} <small>({e(compute(nb, m))}, {e(nb['status'])})</small></h3>"
                    f"<p>{text}</p>{figs}</section>")
    page.append("<h2>Provenance</h2><table class='prov'>" + "".join(
        f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in _provenance(m)) +
        "<tr><td>everything else</td><td>every parameter, package version and seed: "
        "<a href='manifest.json'>manifest.json</a></td></tr></table></html>")
    return "\n".join(md) + "\n", "\n".join(page) + "\n"


def write_index(report_dir, manifest: dict) -> None:
    """Write index.md and index.html into report_dir."""
    md, page = build(report_dir, manifest)
    write_atomic(Path(report_dir) / "index.md", md)
    write_atomic(Path(report_dir) / "index.html", page)


def reindex(report_dir, names: dict | None = None) -> list[str]:
    """Rebuild a finished run's front page: paths made relative (and those of `names` renamed, see
    relative_paths), executed notebooks tidied (tidy_outputs) and their pages re-rendered, the index
    rewritten. Returns the files whose paths changed."""
    rd = Path(report_dir)
    if not (rd / "manifest.json").is_file():
        raise UserError(f"--reindex {rd}: no manifest.json there (not a fer study report)")
    root = run_root(json.loads((rd / "manifest.json").read_text()))
    changed = relativize_report(rd, root, names) if root or names else []
    for nb in sorted(rd.glob("[0-9][0-9]_*.ipynb")):
        if tidy_notebook(nb) or nb.relative_to(rd).as_posix() in changed or not nb.with_suffix(".html").exists():
            render_html(nb, nb.with_suffix(".html"))
    write_index(rd, json.loads((rd / "manifest.json").read_text()))
    return changed
