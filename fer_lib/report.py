"""What a study run tells its readers: provenance for the manifest, and the generated blocks of the README
(the live model's results) and of the findings page, reports/findings.md (every other block: the lab notes
beside the front page, which is fer_lib.frontpage).

    fer report results models/vgg_small_fer2013.pt reports/vgg_small_fer2013/metrics.json
    fer report tuning --search reports/full-real/03_optuna.json 'untuned=...metrics.json' ...
    fer report ablation RUN_DIR...            # the first run is the reference

Every number in a block is read from files the runs wrote, never typed in.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import textwrap
from pathlib import Path

from .environment import describe_machine
from .errors import UserError
from .evaluate import training_summary
from .io import write_atomic
from .models import count_macs, count_params, create_model
from .train import TrainConfig, model_kwargs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/profiles/full.yaml"  # vgg_small's recipe: the full profile's train section
DEFAULT_TRAIN_ARGS = f"--config {DEFAULT_CONFIG}"
FINDINGS = Path("reports/findings.md")  # where every block but the README's `results` lives (from the repo root)


def block_file(name: str) -> Path:
    """The file that holds the generated block NAME: the README the live model's results, the findings page the rest."""
    return Path("README.md") if name == "results" else FINDINGS


# ----------------------------------------------------------------------------- provenance

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


# ----------------------------------------------------------------------------- generated blocks

def readme_markers(name: str) -> tuple[str, str]:
    """The comment pair around a generated block (README or findings page)."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


README_START, README_END = readme_markers("results")


def _made_by(*words) -> str:
    """The first line of a generated README block: the `fer report` command that makes it (tests/test_report.py reruns it)."""
    return f"<!-- made by: {shlex.join(['fer', 'report', *map(str, words)])} -->"


def readme_results(checkpoint: Path, metrics_json: Path, train_args: str = DEFAULT_TRAIN_ARGS,
                   block: str = "results") -> str:
    """The README's results block, built only from the committed checkpoint and its metrics.json;
    train_args: the `fer train` options that made it (the recipe file and any flags on top).

        fer report results models/vgg_small_fer2013.pt reports/vgg_small_fer2013/metrics.json
    """
    import torch

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
    machine = f"a {describe_machine(m_)}" if m_ else "the 2-core CPU"
    if len(trained.get("ran_on", [])) > 1:  # resumed on other machines: name each
        machine = " and ".join(f"a {ran_on}" for ran_on in trained["ran_on"])
    half = " --export-half" if _stored_half(ck) else ""
    quant = ck.get("quantization")  # fer quantize: int8 inference of the trained float checkpoint
    trained_as = Path(quant["calibration"]["source"]).as_posix() if quant else checkpoint
    int8 = (f" It runs in int8 (`fer quantize`: per-channel int8 weights, activation ranges observed on "
            f"{quant['calibration']['faces']} Training faces; scored below with {_int8_kernels(m)} kernels)."
            if quant else "")
    quantize = (f"`fer quantize {trained_as} --data data/fer2013.h5 --faces {quant['calibration']['faces']} "
                f"--seed {quant['calibration']['seed']} --out {checkpoint}`, then " if quant else "")
    return "\n".join([
        _made_by("results", checkpoint, metrics_json,
                 *(["--train-args", train_args] if train_args != DEFAULT_TRAIN_ARGS else []),
                 *(["--block", block] if block != "results" else [])),
        f"Model `{ck['model_name']}` ({checkpoint}), trained {cfg['epochs']} epochs on Training with "
        f"`{cfg['optimizer']}` / `{cfg['scheduler']}`, lr {cfg['lr']}, label smoothing {cfg['label_smoothing']}; "
        f"checkpoint chosen on PublicTest at epoch {ck['epoch']}. Training wall time to that epoch on {machine}: "
        f"{trained['wall_s'] / 60:.0f} min, median {trained['median_epoch_s']:.0f} s per epoch "
        f"(an epoch takes longer while other jobs share the CPU).{int8}",
        "",
        *_accuracy_table(m),
        "",
        f"{made_by}Reproduce: `fer preprocess archive.zip --out data/fer2013.h5`, then "
        f"`fer train --data data/fer2013.h5 {train_args} --out runs/{Path(trained_as).stem} "
        f"--export {trained_as}{half}`, then {quantize}`fer evaluate --checkpoint {checkpoint} --data data/fer2013.h5 "
        f"--tta {','.join(m['tta']) or 'none'} --out {Path(metrics_json).parent}`. "
        f"Figures and per-class metrics: `{Path(metrics_json).parent}/`.",
    ])


NOT_FIT_FOR = (
    "FER-2013 is web images found by keyword search: posed and spontaneous faces, mostly frontal, labelled once "
    "by crowd workers (human agreement on it is about 65%), and biased in age and ethnicity (few children, old "
    "people and dark-skinned faces). It labels the expression a face shows, not what a person feels. Not for "
    "decisions about people (hiring, policing, health, education, border control), not for children or groups "
    "under-represented in FER-2013 without measuring it on them, not on profile or occluded faces, and not as "
    "evidence of emotion or intent.")


def model_card(checkpoint: Path, metrics_json: Path, reproduce: str = "") -> str:
    """A checkpoint's model card (markdown), every number read from the checkpoint and its `fer evaluate`
    metrics.json: the network, its training, its input, PrivateTest with per-class recall, what it is not fit
    for, and how it was made (its made_by when a study made it, else `reproduce`).

        fer report card models/vgg_crop44_int8_fer2013.pt reports/vgg_crop44_int8_fer2013/metrics.json
    """
    import torch

    from .assets import LIVE_MODEL
    from .data import source_sha256
    checkpoint, metrics_json = Path(checkpoint), Path(metrics_json)
    m = json.loads(metrics_json.read_text())
    if m.get("checkpoint_sha256") != source_sha256(checkpoint):
        raise UserError(f"{metrics_json}: it scored another file than {checkpoint} (sha256 differs); "
                        f"run fer evaluate --checkpoint {checkpoint} first")
    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg, members = m.get("train_config") or {}, (m.get("model_args") or {}).get("members")
    model = create_model(m["model_name"], **m["model_args"])
    size = (m["model_args"].get("img_size") or 48) if not members else cfg.get("crop") or 48
    net = (f"an ensemble of {len(members)} networks averaged" if members else
           f"`{m['model_name']}`" + (f" ({cfg['activation']})" if cfg.get("activation") else ""))
    trained = []
    if cfg:
        trained.append(f"{cfg['epochs']} epochs, `{cfg['optimizer']}` / `{cfg['scheduler']}`, lr {cfg['lr']:g}, "
                       f"batch {cfg['batch_size']}, weight decay {cfg['weight_decay']:g}, label smoothing "
                       f"{cfg['label_smoothing']:g}, seed {cfg['seed']}"
                       + (f", random {cfg['crop']}-px crops of each face (the centre crop at inference)"
                          if cfg.get("crop") else "")
                       + (f", EMA of the weights (decay {cfg['ema_decay']:g})" if cfg.get("ema_decay") else ""))
    tr = m.get("training") or {}
    if tr.get("wall_s"):
        trained.append(f"{tr['wall_s'] / 3600:.1f} h of training ({tr['median_epoch_s']:.0f} s a median epoch)")
    quant = ck.get("quantization") or m.get("quantization")
    if quant:
        cal = quant["calibration"]
        inference = (f"int8 (`fer quantize`: per-channel int8 weights, activation ranges from {cal['faces']} "
                     f"Training faces, seed {cal['seed']}, PyTorch's {quant.get('engine', 'x86')} kernels), from "
                     f"the float weights of `{Path(cal['source']).name}`.")
    else:
        inference = "float32" + (" (weights stored in float16)" if _stored_half(ck) else "") + "."
    onnx = checkpoint.with_suffix(".onnx")
    if onnx.exists():
        inference += (f" `{onnx.name}` is the same network for onnxruntime (`fer export --onnx`, its own graph; "
                      "normalization and crop inside it).")
    test = m["test"]["plain"]
    recall = {c: r["recall"] for c, r in test["report"].items() if c in m["class_names"]}
    weak = sorted(recall, key=recall.get)[:2]
    tta = [f"{mode} {100 * r['accuracy']:.2f}%" for mode, r in m["test"].items() if mode != "plain"]
    made_by = ck.get("made_by")
    if made_by:
        how = (f"Made by notebook {made_by.get('notebook')} of `fer study --profile {made_by.get('profile')}` "
               f"({made_by.get('role')} model)" + (f"; {reproduce}" if reproduce else "."))
    else:
        how = reproduce or f"from `{cfg.get('out', '?')}`; see the findings page."
    live = checkpoint.name == Path(LIVE_MODEL).name
    command = " ".join(["fer report card", shlex.quote(checkpoint.as_posix()), shlex.quote(metrics_json.as_posix()),
                        *(["--reproduce", shlex.quote(reproduce)] if reproduce else [])])
    intro = ("What `fer predict`, `fer video` and `fer_lib.detect_emotions` use unless given `--checkpoint`. It "
             "travels in the wheel (package data, `fer_lib/live/`); `fer models` prints this card.")
    bullets = [
        f"- **Network.** {net}, {count_params(model) / 1e6:.2f} M parameters, "
        f"{count_macs(model, img_size=size) / 1e6:.0f} M multiply-adds per face.",
        "- **Trained on.** FER-2013's Training split" + (f": {'; '.join(trained)}" if trained else "")
        + f"; checkpoint chosen on PublicTest ({100 * m['val']['plain']['accuracy']:.2f}%)"
        + (f" at epoch {m['checkpoint_epoch']}." if m.get("checkpoint_epoch") else "."),
        f"- **Inference.** {inference}",
        "- **Input.** uint8 grayscale faces 48 x 48 (a face detector's box, square, resized with INTER_AREA)"
        + (f", the centre {size} x {size} crop" if size != 48 else "")
        + f", scaled to [0, 1] then normalized with the Training mean {ck['mean']:.4f} and std {ck['std']:.4f}. "
        f"Output: {len(m['class_names'])} probabilities, classes "
        + " ".join(f"{i}={c}" for i, c in enumerate(m["class_names"])) + ".",
        f"- **PrivateTest (read once), no test-time augmentation:** accuracy {100 * test['accuracy']:.2f}% [95% CI "
        f"{100 * test['accuracy_ci95'][0]:.2f}, {100 * test['accuracy_ci95'][1]:.2f}], macro-F1 "
        f"{100 * test['macro_f1']:.2f}% (`{metrics_json.as_posix()}`"
        + (f"; with test-time augmentation: {', '.join(tta)}" if tta else "") + "). Per-class recall: "
        + ", ".join(f"{c} {100 * r:.1f}%" for c, r in recall.items())
        + f". The weakest classes: {weak[0]} and {weak[1]}.",
        f"- **What it is not fit for.** {NOT_FIT_FOR}",
        f"- **Reproduce.** {how}"]
    title = f"# Model card: `{checkpoint.name}`" + (f" (and `{onnx.name}` for onnxruntime)" if onnx.exists() else "")
    wrap = textwrap.TextWrapper(width=112, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False)
    return "\n".join([f"<!-- made by: {command} -->", title, "", *([textwrap.fill(intro, 112), ""] if live else []),
                      *(wrap.fill(b) for b in bullets), ""])


def _stored_half(ck: dict) -> bool:
    """Whether a checkpoint keeps its weights in float16 (fer train --export-half)."""
    import torch
    return any(v.dtype == torch.float16 for v in ck.get("state_dict", {}).values())


def _int8_kernels(m: dict) -> str:
    """Which CPU's int8 kernels scored a metrics.json (they differ a little between AVX2 and AVX-512)."""
    return m["quantization"].get("cpu_capability", "x86").replace("AVX512", "AVX-512")


def _accuracy_table(m: dict) -> list[str]:
    """Accuracy, macro-F1 and ECE per split and view of a `fer evaluate` metrics.json, as table lines."""
    rows = ["| split | TTA | accuracy [95% CI] | macro-F1 | ECE |", "|---|---|---|---|---|"]
    for split, usage in (("val", "PublicTest (selection)"), ("test", "PrivateTest (reported once)")):
        for mode, res in m[split].items():
            lo, hi = res["accuracy_ci95"]
            rows.append(f"| {usage} | {mode} | {100 * res['accuracy']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}] "
                        f"| {100 * res['macro_f1']:.2f}% | {res['ece']:.3f} |")
    return rows


def readme_ensemble(checkpoint: Path, metrics_json: Path, top: int = 5, block: str = "ensemble") -> str:
    """The findings-page block of a `fer ensemble --choose` checkpoint: its members, the PublicTest choice among
    the subsets (reports/<name>/selection.json), and its evaluation (metrics.json beside it)."""
    import torch

    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    m = json.loads(Path(metrics_json).read_text())
    selection_json = Path(metrics_json).parent / "selection.json"
    sel = json.loads(selection_json.read_text())
    model = create_model("ensemble", **ck["model_args"])
    members = " + ".join(
        f"`{mem['checkpoint']}` (`{mem['model_name']}`"
        + (f", {mem['config']['crop']}-px crops" if (mem.get("config") or {}).get("crop") else "")
        + (f", {mem['config']['epochs']} epochs, best {mem['epoch']})" if mem.get("config") else ")")
        for mem in ck["members"])
    singles = [r for r in sel["subsets"] if len(r["members"]) == 1]
    candidates = [r["members"][0] for r in singles]
    shown = sel["subsets"][:top] + [r for r in singles[:1] if r not in sel["subsets"][:top]]
    choice = [f"| {' + '.join(Path(x).name for x in r['members'])}{'' if r['fits'] else ' (over a limit)'} "
              f"| {100 * r['val_acc']:.2f}% | {r['val_nll']:.3f} | {r['mb']:.1f} MB | {r['macs'] / 1e6:.0f} M |"
              for r in shown]
    return "\n".join([
        _made_by("ensemble", checkpoint, metrics_json, *(["--block", block] if block != "ensemble" else [])),
        f"Model `ensemble` ({checkpoint}, {Path(checkpoint).stat().st_size / 1e6:.1f} MB, {ck['storage']} weights): "
        f"the mean of the probabilities of {members}; {count_params(model) / 1e6:.2f} M parameters, "
        f"{count_macs(model) / 1e6:.0f} M MACs per face. Its members were chosen on PublicTest (plain view) among "
        f"every subset of up to {sel['max_members']} of the {len(candidates)} candidates that fits in "
        f"{sel['max_mb']:g} MB ({len(sel['subsets'])} subsets, the best {top} and the best single model shown; "
        f"all in `{selection_json.as_posix()}`); PrivateTest was scored once, afterwards.",
        "",
        "| members | PublicTest (plain) | log loss | stored | MACs / face |",
        "|---|---|---|---|---|", *choice,
        "",
        f"Stored with {ck['storage']} weights, the chosen ensemble scores {100 * m['val']['plain']['accuracy']:.2f}% "
        f"on PublicTest (plain) against {100 * sel['subsets'][0]['val_acc']:.2f}% with its members' own weights:",
        "",
        *_accuracy_table(m),
        "",
        f"Reproduce: `fer ensemble {' '.join(candidates)} --choose --data data/fer2013.h5 --storage {sel['storage']} "
        f"--max-members {sel['max_members']} --max-mb {sel['max_mb']:g} --out {checkpoint}`, then `fer evaluate "
        f"--checkpoint {checkpoint} --data data/fer2013.h5 --tta {','.join(m['tta']) or 'none'} --out "
        f"{Path(metrics_json).parent}`. Figures and per-class metrics: `{Path(metrics_json).parent}/`.",
    ])


def search_summary(study_json: Path) -> str:
    """What an Optuna search did, from the JSON notebook 03 writes (`03_optuna.json`): one sentence, and,
    once its finalists were retrained at the final budget, their table and the rank correlation."""
    d = json.loads(Path(study_json).read_text())
    search, default, budget = d["search"], d.get("default_trial"), d.get("budget", {})
    share = "all of" if search["train_fraction"] == 1 else f"a stratified {search['train_fraction']:.0%} of"
    epochs = search["epochs_per_trial"]
    if d.get("pruner") == "halving":
        epochs = (f"{budget['min_epochs']} to {epochs} epochs (successive halving: the best "
                  f"1/{budget['reduction_factor']} go on at each rung)")
    else:
        epochs = f"{epochs} epochs"
    head = (f"The search (`{Path(study_json).as_posix()}`): {d['n_trials']} trials of {epochs} "
            f"on {share} Training, {d['n_pruned']} pruned. ")
    best = (f"of the best trial ({d['best_trial']}): {100 * d['best_value']:.2f}%." if "best_trial" in d
            else "no trial finished.")
    if default is None:  # e.g. a search killed during its default trial and not rerun
        text = head + "The untuned default has not finished in this study; PublicTest accuracy " + best
    else:
        text = (head + f"PublicTest accuracy of the untuned default (trial {default['number']}): "
                f"{100 * default['value']:.2f}%; " + best)
    final = d.get("final")
    return text if not final else text + "\n\n" + finalists_summary(final, search["epochs_per_trial"])


def finalists_summary(final: dict, proxy_epochs: int) -> str:
    """The finalists retrained at the final budget (final.json): both scores of each, the rank correlation
    of the proxy and final scores, and the search's best finalist against the references."""
    epochs = final["final_budget"]["epochs"]
    # the accuracies training measured each epoch (in its precision, bf16 autocast where used): fer evaluate's
    # own, in fp32, may differ by a few faces
    rows = [f"| {r['role']} | {r['trial']} | {100 * r['proxy_val_acc']:.2f}% | {100 * r['final_val_acc']:.2f}% "
            f"(epoch {r['final_epoch']}) |" for r in final["finalists"]]
    rho = final["spearman_proxy_final"]
    lines = [f"| finalist | trial | PublicTest in the search (up to {proxy_epochs} epochs) "
             f"| PublicTest at the final budget ({epochs} epochs) |", "|---|---|---|---|", *rows, "",
             "Rank correlation (Spearman) of the search's and the final PublicTest scores: "
             + ("n/a (too few finalists)." if rho is None else f"{rho:+.2f}.")]
    by_role = {role: r for r in final["finalists"] for role in r["role"].split("+")}
    best = next((r for r in final["finalists"] if r["trial"] == final.get("search_best")), None)
    if best and {"default", "recipe"} <= set(by_role):
        gain = {ref: 100 * (best["final_val_acc"] - by_role[ref]["final_val_acc"]) for ref in ("default", "recipe")}
        met = gain["default"] >= 1.5 and gain["recipe"] >= 0
        lines.append(f"The search's best finalist (trial {best['trial']}) against the untuned default: "
                     f"{gain['default']:+.2f} points of PublicTest at {epochs} epochs; against the hand recipe: "
                     f"{gain['recipe']:+.2f} (the bar: at least +1.5 and +0): "
                     + ("the search paid." if met else "**the search did not pay**."))
    return "\n".join(lines)


def _evaluated(path, m: dict | None = None) -> tuple[dict, dict, dict]:
    """(metrics, its training config, its training summary) of a `fer evaluate` metrics.json (m: already read)."""
    m = json.loads(Path(path).read_text()) if m is None else m
    cfg, tr = m.get("train_config"), m.get("training")
    if not cfg or not tr:
        raise ValueError(f"{path}: no training config/history; re-run fer evaluate on the checkpoint")
    return m, cfg, tr


def _model_of(cfg: dict):
    """The model a training config builds, for its parameter and MAC counts."""
    return create_model(cfg["model"], **model_kwargs(TrainConfig(**cfg)))


def readme_tuning(entries, study_json: Path | None = None, block: str = "tuning") -> str:
    """The findings page's tuned-against-untuned block: the search in a sentence (from study_json), then one
    table row per (label, metrics.json of `fer evaluate`); the first row is the reference.

        python -m fer_lib.report tuning --search reports/full-real/03_optuna.json \\
            "untuned default=reports/tuning/default/metrics.json" "Optuna best=reports/tuning/optuna-best/metrics.json"
    """
    rows, runs = [], []
    for label, path in entries:
        m, cfg, tr = _evaluated(path)
        val, test = m["val"]["plain"], m["test"]["plain"]
        runs.append((label, val["accuracy"], test["accuracy"]))
        lo, hi = test["accuracy_ci95"]
        delta = (f"{100 * (val['accuracy'] - runs[0][1]):+.2f} / {100 * (test['accuracy'] - runs[0][2]):+.2f}"
                 if len(runs) > 1 else "reference")
        rows.append(f"| {label} | `{cfg['model']}` | {cfg['optimizer']} / {cfg['scheduler']} | {cfg['batch_size']} "
                    f"| {cfg['lr']:.3g} | {tr['epochs_run']} (best {m['checkpoint_epoch']}) | {tr['wall_s'] / 60:.0f} min, "
                    f"{tr['median_epoch_s']:.0f} s/epoch{_machines(tr)} | {100 * val['accuracy']:.2f}% "
                    f"| {100 * test['accuracy']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}] | {delta} "
                    f"| `{Path(path).parent.as_posix()}/` |")
    (ref, ref_val, ref_test), best = runs[0], max(runs, key=lambda r: r[1])
    verdict = (f"Chosen on PublicTest: **{best[0]}**"
               + (f", {100 * (best[1] - ref_val):+.2f} points over {ref} on PublicTest and "
                  f"{100 * (best[2] - ref_test):+.2f} on PrivateTest." if best[0] != ref else
                  "; no other recipe beat it on PublicTest, so tuning did not help here."))
    command = " ".join(["fer report tuning", *(["--block", block] if block != "tuning" else []),
                        *(["--search", str(study_json)] if study_json else []),
                        *(shlex.quote(f"{label}={path}") for label, path in entries)])
    return "\n".join([
        f"<!-- made by: {command} -->",  # tests/test_report.py reruns it
        *([search_summary(study_json), ""] if study_json else []),
        "| recipe | model | optimizer / scheduler | batch | lr | epochs | training time (median epoch) | PublicTest "
        "| PrivateTest [95% CI] | vs first row, points (Public / Private) | report |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "", verdict])


def _machines(training: dict) -> str:
    """' (on 2 machines)' for a run resumed on other machines, whose times mix their speeds; else ''."""
    n = len(training.get("ran_on", []))
    return f" (on {n} machines)" if n > 1 else ""


def readme_models(entries, block: str = "distillation") -> str:
    """A table of models side by side, one row per (label, metrics.json of `fer evaluate`): size, cost,
    training budget, teacher, and PublicTest (selection) beside PrivateTest (scored once), plain and flip.

        fer report models "teacher=reports/distillation/teacher/metrics.json" "student=..." --block distillation
    """
    rows = []
    for label, path in entries:
        m = json.loads(Path(path).read_text())
        if m.get("model_name") == "ensemble":  # trained members, no recipe of its own
            model, arch, epochs, teacher = create_model("ensemble", **m["model_args"]), "ensemble", "its members'", "none"
        else:
            _, cfg, _ = _evaluated(path, m)
            model, arch = _model_of(cfg), cfg["model"] + ("`, `int8" if m.get("quantization") else "")
            epochs = (f"{cfg['epochs']} (best {m['checkpoint_epoch']})"
                      + (f" on top of `{Path(cfg['init']).name}`" if cfg.get("init") else ""))
            teacher = (f"`{Path(cfg['teacher']).name}` (T {cfg['kd_temperature']:g}, weight {cfg['kd_alpha']:g}"
                       + (", targets cached" if cfg.get("kd_cache") else "") + ")" if cfg.get("teacher") else "none")
        val, test = m["val"]["plain"], m["test"]["plain"]
        lo, hi = test["accuracy_ci95"]
        flip = f"{100 * m['test']['flip']['accuracy']:.2f}%" if "flip" in m["test"] else "-"
        rows.append(f"| {label} | `{arch}` | {count_params(model) / 1e6:.2f} M | {count_macs(model) / 1e6:.0f} M "
                    f"| {epochs} | {teacher} | {100 * val['accuracy']:.2f}% "
                    f"| {100 * test['accuracy']:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}] | {flip} "
                    f"| `{Path(path).parent.as_posix()}/` |")
    return "\n".join([
        _made_by("models", *(f"{label}={path}" for label, path in entries), "--block", block),
        "| model | architecture | params | MACs / face | epochs | distilled from | PublicTest (selection) "
        "| PrivateTest (once) [95% CI] | PrivateTest, flip TTA | report |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows])


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
        model = _model_of(cfg)
        best = max(hist, key=lambda r: r["val_acc"])
        gains[d.name] = best["val_acc"] - ref_best
        timing = training_summary(hist)
        rows.append(f"| {d.name} | {_recipe_change(cfg, ref_cfg)} | {count_params(model) / 1e6:.2f} M "
                    f"| {count_macs(model) / 1e6:.0f} M | {100 * best['val_acc']:.2f}% (epoch {best['epoch']}) "
                    f"| {100 * gains[d.name]:+.2f} | {100 * hist[-1]['train_acc']:.1f}% "
                    f"| {timing['median_epoch_s']:.0f} s{_machines(timing)} |")
    command = "fer report ablation " + " ".join(Path(d).as_posix() for d, _, _ in runs)
    return "\n".join([
        f"<!-- made by: {command} -->",
        f"Each run: `fer train --config {DEFAULT_CONFIG} --epochs {len(ref_hist)}` on all of Training with "
        "the one change shown, seed 0, one torch thread per run (two runs side by side). PublicTest accuracy "
        "of the best epoch; PrivateTest is not read.",
        "",
        "| run | change against the reference | params | MACs / image | best PublicTest | vs reference, "
        "points | train acc, last epoch | median epoch |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        "Kept (beat the reference on PublicTest): " + (", ".join(f"**{n}**" for n, g in gains.items() if g > 0)
                                                        or "none at this budget") + "."])


def update_readme(readme: Path, block: str, name: str = "results") -> None:
    """Replace what lies between <!-- NAME:start --> and <!-- NAME:end --> in a README or the findings page."""
    start, end = readme_markers(name)
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_atomic(readme, f"{head}{start}\n{block}\n{end}{tail}")


def add_arguments(p) -> None:
    p.add_argument("--file", "--readme", dest="readme", type=Path, default=None,
                   help=f"the file holding the block (default: README.md for results, {FINDINGS} for the others)")
    sub = p.add_subparsers(dest="block", required=True)
    r = sub.add_parser("results", help="a committed model's results")
    r.add_argument("checkpoint", type=Path)
    r.add_argument("metrics", type=Path, help="its fer evaluate metrics.json")
    r.add_argument("--block", dest="readme_block", default="results",
                   help="block name (results: the live model, in the README; accurate: the accurate one)")
    r.add_argument("--train-args", default=DEFAULT_TRAIN_ARGS, help="the fer train options that made it")
    e = sub.add_parser("ensemble", help="a fer ensemble checkpoint: its choice on PublicTest and its results")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("metrics", type=Path, help="its fer evaluate metrics.json (selection.json beside it)")
    e.add_argument("--block", dest="readme_block", default="ensemble", help="block name")
    t = sub.add_parser("tuning", help="tuned against untuned recipes at full budget")
    t.add_argument("--search", type=Path, help="notebook 03's 03_optuna.json")
    t.add_argument("--block", dest="readme_block", default="tuning", help="block name")
    t.add_argument("runs", nargs="+", metavar="LABEL=METRICS_JSON", help="the first is the reference")
    mo = sub.add_parser("models", help="models side by side (the distillation rows)")
    mo.add_argument("runs", nargs="+", metavar="LABEL=METRICS_JSON")
    mo.add_argument("--block", dest="readme_block", default="distillation", help="block name")
    c = sub.add_parser("card", help="a checkpoint's model card, written beside it (CHECKPOINT.md)")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("metrics", type=Path, help="its fer evaluate metrics.json")
    c.add_argument("--reproduce", default="", help="how it was made, for a checkpoint no study made")
    c.add_argument("--overwrite", action="store_true", help="replace an existing card")
    b = sub.add_parser("ablation", help="the engine additions at one equal budget, on PublicTest")
    b.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="the first is the reference")


def run(args) -> int:
    if args.block == "card":
        from .errors import check_output_path
        card = args.checkpoint.with_suffix(".md")
        check_output_path(card, "card", overwrite=args.overwrite)
        write_atomic(card, model_card(args.checkpoint, args.metrics, args.reproduce))
        print(f"wrote {card}")
        return 0
    args.readme = args.readme or block_file(getattr(args, "readme_block", args.block))
    if args.block == "results":
        update_readme(args.readme, readme_results(args.checkpoint, args.metrics, args.train_args, args.readme_block),
                      args.readme_block)
    elif args.block == "ensemble":
        update_readme(args.readme, readme_ensemble(args.checkpoint, args.metrics, block=args.readme_block),
                      args.readme_block)
    elif args.block == "ablation":  # the findings page, and beside the runs for notebook 02
        table = ablation_table(args.runs)
        update_readme(args.readme, table, "ablation")
        write_atomic(Path(args.runs[0]).parent / "ablation.md", table + "\n")
    elif args.block == "models":
        bad = [run for run in args.runs if "=" not in run]
        if bad:
            raise UserError(f"{bad[0]}: each run is LABEL=path/to/metrics.json")
        update_readme(args.readme, readme_models([run.split("=", 1) for run in args.runs], args.readme_block),
                      args.readme_block)
    else:
        bad = [run for run in args.runs if "=" not in run]
        if bad:
            raise UserError(f"{bad[0]}: each run is LABEL=path/to/metrics.json")
        update_readme(args.readme, readme_tuning([run.split("=", 1) for run in args.runs], args.search,
                                                 args.readme_block), args.readme_block)
    print(f"wrote the {getattr(args, 'readme_block', args.block)} block of {args.readme}")
    return 0
