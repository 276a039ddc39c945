"""What a study run tells its readers: atomic writes, provenance for the manifest, the README's
generated blocks (the front page is fer_lib.frontpage).

    python -m fer_lib.report results models/vgg_small_fer2013.pt reports/vgg_small_fer2013/metrics.json

Every number in a README block is read from files the runs wrote, never typed in.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fer_lib", "torch", "numpy", "h5py", "opencv-python-headless", "optuna", "scikit-learn",
            "matplotlib", "seaborn", "pandas", "papermill", "nbconvert", "nbformat", "nbclient",
            "ipykernel", "nbval", "tqdm")


# ----------------------------------------------------------------------------- provenance

def write_atomic(path, content) -> Path:
    """Write `content` (str, bytes, or a function given a temporary path) to `path` through a
    temporary file in the same folder and a rename: a crash or Ctrl-C never leaves a half-written
    file, and concurrent writers (Optuna workers) each publish one whole file. The one home for
    atomic writes in fer_lib."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer, and it keeps the extension that savefig, OpenCV and PIL take the format from.
    tmp = path.with_name(f"{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{path.suffix}")
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@\s]*)@", re.IGNORECASE)


def mask_url(text: str) -> str:
    """Every `scheme://user:PASSWORD@host` in text shown as `scheme://user:***@host`."""
    return URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", str(text))


def split_url_password(url: str) -> tuple[str, str | None]:
    """(url without its password, the password or None): `postgresql://u:pw@h/db` -> (`postgresql://u@h/db`, `pw`)."""
    m = URL_PASSWORD.search(url)
    if not m:
        return url, None
    return url[:m.start()] + m["head"] + "@" + url[m.end():], m["password"]


def clean_stale_partials(folder) -> list[Path]:
    """Delete the temporary files write_atomic left in `folder` when its writer was killed
    (the writer's pid is in the name and no longer runs); live writers' files stay."""
    removed = []
    for tmp in Path(folder).glob("*.partial*"):
        m = re.search(r"\.(\d+)-[0-9a-f]{8}\.partial", tmp.name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:  # another user's live process
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def describe_environment() -> dict:
    """Versions, platform, CPU and device: what a reader needs to redo the run."""
    import torch
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    cpu, flags = platform.processor(), set()
    if Path("/proc/cpuinfo").exists():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
        flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    # the training speed depends on these far more than on the model name: AMX bf16 is ~5x AVX2 fp32
    cpu_flags = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu, "cpu_flags": cpu_flags,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu",
            "cpu_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "packages": versions}


CODE_PATHS = ("fer_lib", "notebooks", "configs", "benchmarks", "pyproject.toml")


def describe_git() -> dict:
    """The commit of the fer_lib that is running (not of the current folder: an editable install
    may point elsewhere) and a hash of uncommitted changes to the code, so a study can tell if
    its code changed under it."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    try:
        status = git("status", "--porcelain", "--", *CODE_PATHS)  # reports/ change during a study; code must not
        changes = git("diff", "HEAD", "--binary", "--", *CODE_PATHS) + "\0" + status
        return {"root": str(ROOT), "commit": git("rev-parse", "HEAD"), "dirty": bool(status),
                "changes_sha256": hashlib.sha256(changes.encode()).hexdigest()}
    except (OSError, subprocess.CalledProcessError):
        return {"root": str(ROOT), "commit": None, "dirty": None, "changes_sha256": None}


def describe_data(h5) -> dict:
    """sha256 and counts from the HDF5's attributes (written by notebook 01)."""
    if not h5 or not Path(h5).exists():
        return {"h5": str(h5), "exists": False}
    from .data import read_info
    info = read_info(h5)
    return {"h5": str(h5), "source": info["source"], "sha256": info["source_sha256"],
            "synthetic": info["synthetic"], "counts": info["counts"]}


# ----------------------------------------------------------------------------- README results

def readme_markers(name: str) -> tuple[str, str]:
    """The comment pair around a generated README block."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


README_START, README_END = readme_markers("results")


def readme_results(checkpoint: Path, metrics_json: Path) -> str:
    """The README's results block, built only from the committed checkpoint and its metrics.json.

        python -m fer_lib.report results models/vgg_small_fer2013.pt reports/vgg_small_fer2013/metrics.json
    """
    import torch

    from .evaluate import training_summary  # evaluate imports this module
    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    m = json.loads(Path(metrics_json).read_text())
    cfg, trained = ck["config"], training_summary(ck["history"])
    run = Path(cfg["out"]).parent.name  # fer study trains in runs/study/<run>/train
    manifest = ROOT / "reports" / run / "manifest.json"
    made_by = ""
    if Path(cfg["out"]).name == "train" and manifest.exists():
        made_by = (f"Made by notebook 02 of `fer study --data archive.zip --profile "
                   f"{json.loads(manifest.read_text())['profile']} --run {run}` (report: `reports/{run}/`). ")
    m_ = ck.get("machine")  # checkpoints before 2026-12 did not record it: an AVX2-only 2-core CPU, fp32
    machine = (f"a {m_['cpu_count']}-core {m_['cpu']} ({', '.join(m_['cpu_flags'][:1]) or 'no AVX2'}, "
               f"{m_['precision']}, {m_['torch_threads']} threads)" if m_ else "the 2-core CPU")
    half = " --export-half" if any(v.dtype == torch.float16 for v in ck["state_dict"].values()) else ""
    rows = []
    for split, usage in (("val", "PublicTest (selection)"), ("test", "PrivateTest (reported once)")):
        for mode, res in m[split].items():
            lo, hi = res["accuracy_ci95"]
            rows.append(f"| {usage} | {mode} | {100 * res['accuracy']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}] "
                        f"| {100 * res['macro_f1']:.2f}% | {res['ece']:.3f} |")
    return "\n".join([
        f"Model `{ck['model_name']}` ({checkpoint}), trained {cfg['epochs']} epochs on Training with "
        f"`{cfg['optimizer']}` / `{cfg['scheduler']}`, lr {cfg['lr']}, label smoothing {cfg['label_smoothing']}; "
        f"checkpoint chosen on PublicTest at epoch {ck['epoch']}. Training wall time to that epoch on {machine}: "
        f"{trained['wall_s'] / 60:.0f} min, median {trained['median_epoch_s']:.0f} s per epoch "
        "(an epoch takes longer while other jobs share the CPU).",
        "",
        "| split | TTA | accuracy [95% CI] | macro-F1 | ECE |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"{made_by}Reproduce: `fer preprocess archive.zip --out data/fer2013.h5`, then "
        f"`fer train --data data/fer2013.h5 --config configs/{ck['model_name']}.json --out runs/{ck['model_name']} "
        f"--export {checkpoint}{half}`, then `fer evaluate --checkpoint {checkpoint} --data data/fer2013.h5 "
        f"--tta {','.join(m['tta']) or 'none'} --out {Path(metrics_json).parent}`. "
        f"Figures and per-class metrics: `{Path(metrics_json).parent}/`.",
    ])


def search_summary(study_json: Path) -> str:
    """One sentence on an Optuna search from the JSON notebook 03 writes (`03_optuna.json`)."""
    d = json.loads(Path(study_json).read_text())
    search, default = d["search"], d.get("default_trial")
    head = (f"The search (`{Path(study_json).as_posix()}`): {d['n_trials']} trials of {search['epochs_per_trial']} "
            f"epochs on a stratified {search['train_fraction']:.0%} of Training, {d['n_pruned']} pruned. ")
    best = (f"of the best trial ({d['best_trial']}): {100 * d['best_value']:.2f}%." if "best_trial" in d
            else "no trial finished.")
    if default is None:  # e.g. a search killed during its default trial and not rerun
        return head + "The untuned default has not finished in this study; PublicTest accuracy " + best
    return (head + f"PublicTest accuracy of the untuned default (trial {default['number']}): "
            f"{100 * default['value']:.2f}%; " + best)


def readme_tuning(entries, study_json: Path | None = None) -> str:
    """The README's tuned-against-untuned block: the search in a sentence (from study_json), then one
    table row per (label, metrics.json of `fer evaluate`); the first row is the reference.

        python -m fer_lib.report tuning --search reports/full-real/03_optuna.json \\
            "untuned default=reports/tuning/default/metrics.json" "Optuna best=reports/tuning/optuna-best/metrics.json"
    """
    rows, runs = [], []
    for label, path in entries:
        m = json.loads(Path(path).read_text())
        cfg, tr = m.get("train_config"), m.get("training")
        if not cfg or not tr:
            raise ValueError(f"{path}: no training config/history; re-run fer evaluate on the checkpoint")
        val, test = m["val"]["plain"], m["test"]["plain"]
        runs.append((label, val["accuracy"], test["accuracy"]))
        lo, hi = test["accuracy_ci95"]
        delta = (f"{100 * (val['accuracy'] - runs[0][1]):+.2f} / {100 * (test['accuracy'] - runs[0][2]):+.2f}"
                 if len(runs) > 1 else "reference")
        rows.append(f"| {label} | `{cfg['model']}` | {cfg['optimizer']} / {cfg['scheduler']} | {cfg['batch_size']} "
                    f"| {cfg['lr']:.3g} | {tr['epochs_run']} (best {m['checkpoint_epoch']}) | {tr['wall_s'] / 60:.0f} min, "
                    f"{tr['median_epoch_s']:.0f} s/epoch | {100 * val['accuracy']:.2f}% "
                    f"| {100 * test['accuracy']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}] | {delta} "
                    f"| `{Path(path).parent.as_posix()}/` |")
    (ref, ref_val, ref_test), best = runs[0], max(runs, key=lambda r: r[1])
    verdict = (f"Chosen on PublicTest: **{best[0]}**"
               + (f", {100 * (best[1] - ref_val):+.2f} points over {ref} on PublicTest and "
                  f"{100 * (best[2] - ref_test):+.2f} on PrivateTest." if best[0] != ref else
                  "; no other recipe beat it on PublicTest, so tuning did not help here."))
    command = " ".join(["python -m fer_lib.report tuning", *(["--search", str(study_json)] if study_json else []),
                        *(shlex.quote(f"{label}={path}") for label, path in entries)])
    return "\n".join([
        f"<!-- made by: {command} -->",  # the README test reruns it
        *([search_summary(study_json), ""] if study_json else []),
        "| recipe | model | optimizer / scheduler | batch | lr | epochs | training time (median epoch) | PublicTest "
        "| PrivateTest [95% CI] | vs first row, points (Public / Private) | report |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "", verdict])


def _recipe_change(cfg: dict, ref: dict) -> str:
    """The fields in which a run's config differs from the reference's, as `key=value` pairs."""
    skip = {"out", "data", "progress", "device"}
    diff = [f"{k}={cfg.get(k)!r}".replace("'", "") for k in sorted(set(cfg) | set(ref))
            if k not in skip and cfg.get(k) != ref.get(k)]
    return ", ".join(diff) or "(the reference)"


def ablation_table(run_dirs) -> str:
    """The ablation table from training run folders (config.json + history.json each): PublicTest
    accuracy only (PrivateTest is not read for choosing a recipe). The first run is the reference.

        python -m fer_lib.report ablation reports/ablation/base reports/ablation/ema ...
    """
    from .evaluate import training_summary  # evaluate imports this module
    from .models import count_macs, count_params, create_model
    from .train import TrainConfig, model_kwargs
    runs = []
    for d in map(Path, run_dirs):
        for name in ("config.json", "history.json"):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d}: no {name}; is it a fer train run folder?")
        cfg, hist = json.loads((d / "config.json").read_text()), json.loads((d / "history.json").read_text())
        runs.append((d, cfg, hist))
    ref_cfg, ref_hist = runs[0][1], runs[0][2]
    ref_best = max(r["val_acc"] for r in ref_hist)
    rows, gains = [], {}
    for d, cfg, hist in runs:
        if len(hist) != len(ref_hist):
            raise ValueError(f"{d}: {len(hist)} epochs against the reference's {len(ref_hist)}: not an equal budget")
        model = create_model(cfg["model"], **model_kwargs(TrainConfig(**cfg)))
        best = max(hist, key=lambda r: r["val_acc"])
        gains[d.name] = best["val_acc"] - ref_best
        rows.append(f"| {d.name} | {_recipe_change(cfg, ref_cfg)} | {count_params(model) / 1e6:.2f} M "
                    f"| {count_macs(model) / 1e6:.0f} M | {100 * best['val_acc']:.2f}% (epoch {best['epoch']}) "
                    f"| {100 * gains[d.name]:+.2f} | {100 * hist[-1]['train_acc']:.1f}% "
                    f"| {training_summary(hist)['median_epoch_s']:.0f} s |")
    command = "python -m fer_lib.report ablation " + " ".join(Path(d).as_posix() for d, _, _ in runs)
    return "\n".join([
        f"<!-- made by: {command} -->",
        f"Each run: `fer train --config configs/vgg_small.json --epochs {len(ref_hist)}` on all of Training with "
        "the one change shown, seed 0, one torch thread per run (two runs side by side). PublicTest accuracy "
        "of the best epoch; PrivateTest is not read.",
        "",
        "| run | change against the reference | params | MACs / image | best PublicTest | vs reference, "
        "points | train acc, last epoch | median epoch |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        "Kept (beat the reference on PublicTest): " + (", ".join(f"**{n}**" for n, g in gains.items() if g > 0)
                                                        or "none at this budget") + "."])


def update_readme(readme: Path, block: str, name: str = "results") -> None:
    """Replace what lies between <!-- NAME:start --> and <!-- NAME:end --> in the README."""
    start, end = readme_markers(name)
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_atomic(readme, f"{head}{start}\n{block}\n{end}{tail}")


def main(argv=None) -> None:
    import argparse
    p = argparse.ArgumentParser(prog="python -m fer_lib.report", description="Regenerate a README block.")
    sub = p.add_subparsers(dest="block", required=True)
    r = sub.add_parser("results", help="a committed model's results")
    r.add_argument("checkpoint", type=Path)
    r.add_argument("metrics", type=Path, help="its fer evaluate metrics.json")
    r.add_argument("--block", dest="readme_block", default="results", help="README block name (results: the live model; accurate)")
    t = sub.add_parser("tuning", help="tuned against untuned recipes at full budget")
    t.add_argument("--search", type=Path, help="notebook 03's 03_optuna.json")
    t.add_argument("runs", nargs="+", metavar="LABEL=METRICS_JSON", help="the first is the reference")
    b = sub.add_parser("ablation", help="the engine additions at one equal budget, on PublicTest")
    b.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="the first is the reference")
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    a = p.parse_args(argv)
    if a.block == "results":
        update_readme(a.readme, readme_results(a.checkpoint, a.metrics), a.readme_block)
    elif a.block == "ablation":  # README, and beside the runs for notebook 02
        table = ablation_table(a.runs)
        update_readme(a.readme, table, "ablation")
        write_atomic(Path(a.runs[0]).parent / "ablation.md", table + "\n")
    else:
        if any("=" not in run for run in a.runs):
            p.error("each run is LABEL=path/to/metrics.json")
        update_readme(a.readme, readme_tuning([run.split("=", 1) for run in a.runs], a.search), "tuning")


if __name__ == "__main__":
    main()
