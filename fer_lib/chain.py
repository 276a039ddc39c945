"""What notebook 02 makes from a profile's recipe: the accurate model, the ensemble members (the recipe
again at other seeds), the ensemble chosen on PublicTest, and the live model.

    from fer_lib.chain import ModelsConfig, make_models
    made = make_models(recipe, ModelsConfig(seeds=[1, 2]), "runs/study/full-real/fer2013.h5",
                       trainings="runs/study/trainings", out="runs/study/full-real/train")

Each training lives in TRAININGS/<model>-s<seed>-<key>/, keyed by a hash of what shapes it (training_key:
the recipe's fields that differ from TrainConfig's defaults, and the data's source sha256, ingest version
and counts). A rerun, a resumed or restarted study, or another run of the same recipe on the same data
reuses it, continuing it from its last epoch where it was stopped; a change to either trains anew beside
it. A finished training kept in the checkout's trainings/ (keep_trainings, `fer study --keep-trainings`:
its best.pt without optimizer state, history.json and config.json, committed) is reused on any machine, so
that a study too long for one sitting goes on where the last machine stopped. Nothing here reads
PrivateTest: the best single model, the ensemble's members and the model that becomes the live one are all
chosen on PublicTest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .data import load_split, read_info
from .ensemble import build_ensemble, choose_members
from .errors import UserError
from .flags import check_settings, setting
from .io import write_atomic
from .models import count_train_flops, create_model, load_checkpoint, load_model
from .quantize import quantize_checkpoint
from .train import (UNCHECKED, TrainConfig, changed_fields, export_checkpoint, finished, finished_result, fit,
                    model_kwargs, save_atomic)

MADE = ("single", "ensemble", "live")   # OUT/<name>.pt, each written only when the profile makes it
MADE_FILE = "made.json"                 # OUT/made.json: which of them this run made (notebook 04 reads it)
KEPT = Path(__file__).resolve().parents[1] / "trainings"   # finished trainings committed for a new machine
KEPT_FILES = ("best.pt", "history.json", "config.json")
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


@dataclass
class ModelsConfig:
    seeds: list = field(default_factory=list)  # ensemble members: the recipe again at each of these seeds
    max_members: int = setting(3, low=2)       # the ensemble: the best subset (on PublicTest) of 2 to this many
    max_mb: float = setting(60.0, above=0.0)   # ... whose stored weights fit in this many MB
    ensemble_storage: str = setting("fp16", choices=("fp32", "fp16", "int8"))  # the ensemble's stored weights
    live: str = setting("int8", choices=("int8", "float"))  # the live model: the best single one, int8 or as is
    calibration_faces: int = setting(2048, low=1)  # Training faces that calibrate the int8 live model
    ship: dict = field(default_factory=dict)   # fer study --ship: role -> file name in models/ (none: ships nothing)

    def __post_init__(self):
        check_settings(self)
        if not all(isinstance(s, int) and s >= 0 for s in self.seeds):   # check_settings: it is a list
            raise UserError(f"models.seeds: {self.seeds!r}; give a list of seeds (integers >= 0)")
        for role, name in self.ship.items():
            if role not in MADE or not isinstance(name, str) or not name or "/" in name or name.endswith(".pt"):
                raise UserError(f"models.ship: {role}: {name!r}; give one of {list(MADE)} a file stem for models/")


def training_key(cfg: TrainConfig, h5) -> str:
    """16 hex digits of sha256 over what shapes a training: its recipe and its data (not where they lie).
    h5: the HDF5 file, or a dict of its read_info fields (the study's time plan, before notebook 01 writes it)."""
    default, info = dataclasses.asdict(TrainConfig()), h5 if isinstance(h5, dict) else read_info(h5)
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k not in UNCHECKED + ("data",) and v != default[k]}  # a field added later keeps old keys valid
    data = {k: info[k] for k in ("source_sha256", "ingest_version", "counts")}
    blob = json.dumps({"recipe": recipe, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_dir(cfg: TrainConfig, h5, trainings) -> Path:
    return Path(trainings) / f"{cfg.model}-s{cfg.seed}-{training_key(cfg, h5)}"


def epochs_left(cfgs, h5, trainings, kept=(KEPT,)) -> list[int]:
    """The epochs each training of cfgs has still to run (keyed_fit's folders): none where it is kept or
    finished, else its epochs less those in its history.json. h5: as for training_key."""
    left = []
    for c in cfgs:
        name = training_dir(c, h5, trainings).name
        if find_kept(name, kept) is not None:
            left.append(0)
            continue
        try:
            done = len(json.loads((Path(trainings) / name / "history.json").read_text()))
        except (OSError, ValueError):
            done = 0
        left.append(max(c.epochs - done, 0))
    return left


def member_configs(cfg: TrainConfig, mc: ModelsConfig) -> list[TrainConfig]:
    """The recipe itself first, then one copy per member seed."""
    return [cfg] + [dataclasses.replace(cfg, seed=s) for s in dict.fromkeys(mc.seeds) if s != cfg.seed]


def train_all(cfg: TrainConfig, mc: ModelsConfig, h5, trainings, kept=(KEPT,)) -> list[dict]:
    """keyed_fit() each of member_configs."""
    return [{**keyed_fit(c, h5, trainings, kept), "seed": c.seed} for c in member_configs(cfg, mc)]


def keyed_fit(cfg: TrainConfig, h5, trainings, kept=(KEPT,)) -> dict:
    """fit() cfg on h5 in TRAININGS/<model>-s<seed>-<key>/: a finished training there or in a folder of
    kept ones is returned as it is, a stopped one continues. fit()'s result, with its "key"."""
    out = training_dir(cfg, h5, trainings)
    cfg = dataclasses.replace(cfg, data=str(h5), out=str(out))
    found = find_kept(out.name, kept)
    if found is not None:
        print(f"training {cfg.model} seed {cfg.seed}: kept finished in {found}; nothing to train", flush=True)
        return {**kept_training(found, cfg), "key": out.name}
    print(f"training {cfg.model} seed {cfg.seed} in {out}", flush=True)
    # the key holds the data by content: the same faces at another path (another run's HDF5) continue it
    return {**fit(cfg, resume="auto", ignore=("data",)), "key": out.name}


def find_kept(name: str, kept) -> Path | None:
    """The first folder of `kept` that holds the whole kept training `name` (keep_trainings' KEPT_FILES)."""
    return next((Path(k) / name for k in kept if all((Path(k) / name / f).is_file() for f in KEPT_FILES)), None)


def training_compute(results) -> dict:
    """{machine: seconds}: what the epochs of these trainings (fit()'s or keyed_fit()'s results) took, on each
    machine they ran on, from their histories; a reused training counts the compute it cost when it ran."""
    spent = {}
    for r in results:
        for row in r["history"]:
            where = row.get("ran_on") or "an unrecorded machine"
            spent[where] = spent.get(where, 0.0) + float(row.get("time_s") or 0.0)
    return {k: round(v, 1) for k, v in spent.items()}


def train_pflop(results, cfg: TrainConfig, faces: int) -> float:
    """PFLOP of the training steps of these trainings of cfg's model, `faces` Training faces an epoch
    (models.count_train_flops: forward and backward; each epoch's PublicTest scoring aside)."""
    flops = count_train_flops(create_model(cfg.model, **model_kwargs(cfg)))
    return flops * faces * sum(len(r["history"]) for r in results) / 1e15


def kept_training(folder, cfg: TrainConfig) -> dict:
    """What fit() returns for a finished training, read from a kept one (keep_trainings) made by cfg."""
    folder = Path(folder)
    ck = load_checkpoint(folder / "best.pt")
    differ = changed_fields(ck, cfg, ignore=("data",))
    if differ:   # its folder name is the key of cfg: only a hand-edited folder gets here
        raise UserError(f"{folder}: kept from another recipe ({', '.join(differ)} differ); remove it")
    try:   # best.pt's own history ends at its best epoch
        history = json.loads((folder / "history.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{folder / 'history.json'}: unreadable ({e}); keep the training again") from None
    return finished_result(cfg, history, ck["best"], folder)


def keep_trainings(trainings, kept=KEPT) -> list[tuple[str, str]]:
    """Copy each finished training under TRAININGS into KEPT/<its folder name>/ (KEPT_FILES: best.pt
    without optimizer state, the paths in its config reduced to file names), for train_all on another
    machine. A stopped training is left out, and a kept one is never replaced (its name is its recipe and
    data). Returns [(name, "kept" | "already kept" | "unfinished")]."""
    if not Path(trainings).is_dir():
        raise UserError(f"{trainings}: no trainings there (notebook 02 writes them under WORK/trainings)")
    done = []
    for run in sorted(p for p in Path(trainings).iterdir() if (p / "last.pt").is_file()):
        dst = Path(kept) / run.name
        if dst.exists():
            done.append((run.name, "already kept"))
            continue
        ck = load_checkpoint(run / "last.pt")
        if not finished(ck, TrainConfig(**{k: v for k, v in ck["config"].items() if k in TRAIN_FIELDS})):
            done.append((run.name, f"unfinished (epoch {ck['epoch']} of {ck['config'].get('epochs')})"))
            continue
        config = {**ck["config"], **{k: Path(str(ck["config"].get(k) or "")).name for k in ("data", "out")}}
        part = dst.with_name(f".partial-{dst.name}")
        shutil.rmtree(part, ignore_errors=True)
        export_checkpoint(run / "best.pt", part / "best.pt", config=config)
        write_atomic(part / "history.json", json.dumps(ck["history"], indent=2))
        write_atomic(part / "config.json", json.dumps(config, indent=2))
        part.rename(dst)   # whole or not at all
        done.append((run.name, "kept"))
    return done


def make_models(cfg: TrainConfig, mc: ModelsConfig, h5, trainings, out, made_by: dict | None = None,
                kept=(KEPT,)) -> dict:
    """Train (or reuse) every training, then write OUT/single.pt (the best on PublicTest), OUT/ensemble.pt
    (the best subset of two or more on PublicTest, where there are two trainings; OUT/selection.json says why),
    OUT/live.pt, and OUT/made.json listing them. Returns {"trainings": [...], "single", "ensemble", "live": path
    or None, "selection": rows, "listing": made.json}."""
    out = Path(out)
    results = train_all(cfg, mc, h5, trainings, kept)
    best_of = {r["key"]: Path(r["out"]) / "best.pt" for r in results}
    chosen = max(results, key=lambda r: r["best"]["val_acc"])["key"]   # PublicTest, as fit() scored it
    made_by = {**(made_by or {}), "trainings": [r["key"] for r in results]}
    made = {"trainings": results, "single": out / "single.pt", "ensemble": None, "live": out / "live.pt",
            "selection": [], "listing": out / MADE_FILE}
    export_checkpoint(best_of[chosen], made["single"], made_by={**made_by, "role": "single", "training": chosen})
    if len(results) > 1:
        rows = choose_members(list(best_of.values()), h5, mc.max_members, mc.max_mb, storage=mc.ensemble_storage)
        made["selection"] = rows
        write_atomic(out / "selection.json", json.dumps({"split": "val (PublicTest)", "storage": mc.ensemble_storage,
                                                         "max_members": mc.max_members, "max_mb": mc.max_mb,
                                                         "subsets": rows}, indent=2, default=str) + "\n")
        ensembles = [r for r in rows if r["fits"] and len(r["members"]) > 1]  # best first
        if ensembles:   # made even where one model alone scores as well: notebook 04 weighs them on PublicTest
            ck = build_ensemble(ensembles[0]["members"], mc.ensemble_storage)
            made["ensemble"] = save_atomic({**ck, "made_by": {**made_by, "role": "ensemble"}}, out / "ensemble.pt")
    if made["ensemble"] is None:   # a rerun that makes none must not leave an earlier ensemble behind
        (out / "ensemble.pt").unlink(missing_ok=True)
    live_by = {**made_by, "role": "live", "training": chosen}
    if mc.live == "int8":
        quant = quantize_checkpoint(made["single"], h5, mc.calibration_faces)
        export_checkpoint(made["single"], made["live"], half=True, quantization=quant, made_by=live_by)
    else:
        export_checkpoint(made["single"], made["live"], made_by=live_by)
    listing = {role: made[role] and made[role].name for role in MADE}   # beside it: a folder moved stays whole
    write_atomic(out / MADE_FILE, json.dumps({**listing, "made_by": made_by}, indent=2) + "\n")
    return made


def made_models(path) -> list[tuple[str, Path]]:
    """[(role, checkpoint)] to evaluate: each model a MADE_FILE lists (notebook 02's), or one checkpoint
    as ("model", path)."""
    path = Path(path)
    if path.name != MADE_FILE:
        return [("model", path)]
    try:
        listing = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not the list of models notebook 02 made ({e})") from None
    found = [(role, path.parent / listing[role]) for role in MADE if listing.get(role)]
    missing = [str(p) for _, p in found if not p.is_file()]
    if missing or not found:
        raise UserError(f"{path}: lists {', '.join(missing) or 'no model'}, not found; rerun notebook 02")
    return found


def val_accuracy(path, h5) -> float:
    """PublicTest accuracy of a written checkpoint, as it loads (the int8 one as int8)."""
    x, y = load_split(h5, "val")
    return float((load_model(path).predict(x) == y).mean())
