"""Trained checkpoints averaged into one checkpoint, the members chosen on PublicTest.

    fer ensemble models/vgg_crop44_fer2013.pt models/vgg_fer2013.pt --out models/ens.pt --storage int8
    fer ensemble models/*.pt --choose --data data/fer2013.h5 --max-mb 20 --out models/ens.pt

--choose scores every subset of the candidates on PublicTest (plain view, the mean of the members'
probabilities), keeps those within the size and compute limits, and writes the best: highest accuracy,
then lowest log loss, then fewest multiply-adds; the table goes to reports/<name>/selection.json.
PrivateTest is not read. The written checkpoint is
self-describing (model "ensemble", members' architectures and provenance) and loads with load_model.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .data import load_split
from .errors import UserError, check_output_path
from .evaluate import report_dir_for
from .flags import add_dataclass_arguments, check_settings, dataclass_from_arguments, setting
from .io import write_atomic
from .models import (CHECKPOINT_VERSION, STORAGE_BYTES, count_macs, count_params, create_model, load_checkpoint,
                     load_model, store_weights)
from .train import save_atomic


@dataclass
class EnsembleConfig:
    out: str = "models/ensemble_fer2013.pt"  # the ensemble checkpoint to write
    storage: str = setting("fp16", choices=("fp32", "fp16", "int8"))  # stored weights (int8: one scale per output channel)
    choose: bool = False               # pick the best subset of the checkpoints on PublicTest (needs --data)
    data: str = "data/fer2013.h5"      # HDF5 of fer preprocess; only its PublicTest is read
    max_members: int = setting(3, low=1)  # --choose: largest subset tried
    max_mb: float = setting(20.0, above=0.0)  # --choose: the stored weights must fit in this many MB
    max_macs: float = setting(0.0, low=0.0)  # --choose: multiply-adds per face at most (0: no limit)

    def __post_init__(self):
        check_settings(self)


def build_ensemble(paths, storage: str = "fp16") -> dict:
    """One checkpoint dict holding every member's weights; the members must share classes and
    normalization (they were trained on the same HDF5)."""
    if len(paths) < 2:
        raise UserError("an ensemble needs at least two checkpoints")
    cks = [load_checkpoint(p) for p in paths]
    for p, ck in zip(paths[1:], cks[1:]):
        for k in ("mean", "std", "class_names"):
            if ck[k] != cks[0][k]:
                raise UserError(f"{p}: its {k} ({ck[k]}) differs from {paths[0]}'s ({cks[0][k]}); "
                                "members must be trained on the same data")
        if ck["model_name"] == "ensemble":
            raise UserError(f"{p}: is an ensemble already; give its members instead")
    members = [{"model_name": ck["model_name"], "model_args": ck["model_args"]} for ck in cks]
    model = create_model("ensemble", members=members)
    for ck, member in zip(cks, model.members):
        member.load_state_dict(ck["state_dict"])
    state, scales = store_weights(model.state_dict(), storage)
    return {
        "version": CHECKPOINT_VERSION, "fer_lib_version": __version__, "model_name": "ensemble",
        "model_args": {"members": members}, "state_dict": state, "int8_scales": scales,
        "mean": cks[0]["mean"], "std": cks[0]["std"], "class_names": cks[0]["class_names"],
        "epoch": None, "metric": None, "config": None, "history": None, "storage": storage,
        "members": [{"checkpoint": Path(p).name, "model_name": ck["model_name"], "epoch": ck.get("epoch"),
                     "metric": ck.get("metric"), "config": ck.get("config")} for p, ck in zip(paths, cks)],
    }


def choose_members(paths, h5, max_members: int = 3, max_mb: float = 20.0, max_macs: float = 0.0,
                   storage: str = "fp16") -> list[dict]:
    """Every subset of `paths` (one to max_members) scored on PublicTest, best first; a subset over
    the size or compute limit is listed with `fits` False and never chosen."""
    faces, labels = load_split(h5, "val")  # PublicTest: selection only
    proba, size = {}, {}
    for p in paths:
        clf = load_model(p)
        proba[p] = clf.predict_proba(faces)
        size[p] = (count_params(clf.float_model), count_macs(clf.float_model))
    rows = []
    for r in range(1, max_members + 1):
        for subset in itertools.combinations(paths, r):
            pr = np.mean([proba[p] for p in subset], 0)
            params, macs = (sum(size[p][i] for p in subset) for i in (0, 1))
            mb = params * STORAGE_BYTES[storage] / 1e6
            rows.append({"members": [str(p) for p in subset], "val_acc": float((pr.argmax(1) == labels).mean()),
                         "val_nll": float(-np.log(pr[np.arange(len(labels)), labels].clip(1e-12)).mean()),
                         "params": params, "macs": macs, "mb": round(mb, 2),
                         "fits": mb <= max_mb and (not max_macs or macs <= max_macs)})
    rows.sort(key=lambda r: (not r["fits"], -r["val_acc"], r["val_nll"], r["macs"]))
    return rows


# ----------------------------------------------------------------------------- CLI

def add_arguments(p) -> None:
    p.add_argument("checkpoints", nargs="+", help="fer train checkpoints (the candidates with --choose)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (and its selection.json) if it exists")
    add_dataclass_arguments(p, EnsembleConfig)


def run(args) -> int:
    cfg = dataclass_from_arguments(args, EnsembleConfig)
    store_weights({}, cfg.storage)  # an unknown --storage is named before minutes of scoring
    out = Path(cfg.out)
    selection_file = report_dir_for(out) / "selection.json"  # beside fer evaluate's metrics.json of it
    for path in (out, selection_file) if cfg.choose else (out,):
        check_output_path(path, "--out", overwrite=args.overwrite, inputs=(*args.checkpoints, cfg.data))
    for p in args.checkpoints:
        load_checkpoint(p)  # a missing or foreign file is named before minutes of scoring
    members = list(args.checkpoints)
    if cfg.choose:
        if not Path(cfg.data).is_file():
            raise UserError(f"--data {cfg.data}: file not found (--choose scores the subsets on its PublicTest)")
        rows = choose_members(members, cfg.data, cfg.max_members, cfg.max_mb, cfg.max_macs, cfg.storage)
        for r in rows:
            print(f"{100 * r['val_acc']:6.2f}%  nll {r['val_nll']:.4f}  {r['mb']:6.1f} MB  {r['macs'] / 1e6:6.0f} M MACs"
                  f"{'' if r['fits'] else '  (over a limit)'}  " + " + ".join(Path(m).name for m in r["members"]))
        if not rows[0]["fits"]:
            raise UserError("no subset fits --max-mb/--max-macs")
        members = rows[0]["members"]
        if len(members) == 1:
            raise UserError(f"{members[0]} alone beats every ensemble on PublicTest; use it as it is")
        text = json.dumps({"data": str(cfg.data), "split": "val (PublicTest)", "storage": cfg.storage,
                           "max_members": cfg.max_members, "max_mb": cfg.max_mb, "max_macs": cfg.max_macs,
                           "chosen": members, "subsets": rows}, indent=2)
        write_atomic(selection_file, lambda tmp: Path(tmp).write_text(text + "\n"))
    save_atomic(build_ensemble(members, cfg.storage), out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {cfg.storage}): " + " + ".join(Path(m).name for m in members))
    return 0
