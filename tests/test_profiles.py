"""The recipes as data: each profile validated against the steps' dataclasses, the full profile's
`train` section being the committed live model's recipe, and `fer study -p step.field=value`."""
import dataclasses
from pathlib import Path

import pytest

from fer_lib.errors import UserError
from fer_lib.models import load_checkpoint
from fer_lib.profiles import STEPS, list_profiles, load_profile, profile_path
from fer_lib.study import list_notebooks, plan_study
from fer_lib.train import resolve_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list_profiles())
def test_every_profile_loads_into_the_steps_dataclasses(name):
    recipe = load_profile(name)
    assert set(recipe) == set(STEPS) and all(isinstance(recipe[s], cls) for s, cls in STEPS.items())
    assert {"smoke", "full"} <= set(list_profiles())


def test_the_full_profile_is_the_committed_models_recipe():
    """One home for the recipes: the full profile's train section is the accurate model's (the hand-trained
    models/vgg_crop44_fer2013.pt it reproduces), and its search starts from the committed vgg_small's."""
    import yaml
    sections = yaml.safe_load(profile_path("full").read_text())
    section = sections["train"]
    trained = load_checkpoint(ROOT / "models" / "vgg_crop44_fer2013.pt")["config"]
    assert {k: trained.get(k, 1.0 if k == "train_fraction" else None) for k in section} == section
    # and `fer train --config configs/profiles/full.yaml` trains exactly that recipe
    cfg = resolve_config(str(profile_path("full")))
    assert {k: getattr(cfg, k) for k in section} == section
    from fer_lib.tune import search_recipe
    recipe = load_profile("full")
    base = dataclasses.asdict(search_recipe(recipe["train"], recipe["tune"]))
    small = load_checkpoint(ROOT / "models" / "vgg_small_fer2013.pt")["config"]
    assert {k: base[k] for k in small if k in base and k not in ("data", "out", "progress")} == \
        {k: v for k, v in small.items() if k in base and k not in ("data", "out", "progress")}
    assert recipe["models"].seeds == [1, 2] and recipe["models"].live == "int8"


def test_a_misspelt_key_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("train:\n  epochs: 2\n  lerning_rate: 0.1\n")
    with pytest.raises(UserError, match=r"mine.yaml: train.lerning_rate: TrainConfig has no such field"):
        load_profile(bad)
    bad.write_text("trian:\n  epochs: 2\n")
    with pytest.raises(UserError, match=r"unknown step 'trian'"):
        load_profile(bad)
    with pytest.raises(UserError, match=r"unknown profile 'fast'; choose from \['full', 'smoke'\]"):
        load_profile("fast")
    with pytest.raises(UserError, match=r"video.smothing"):
        load_profile("smoke", {"video": {"smothing": "ema"}})
    assert load_profile("smoke", {"train": {"epochs": 3}})["train"].epochs == 3


def test_fer_study_p_sets_a_recipe_field_for_every_notebook_that_uses_it():
    nbs = list_notebooks(ROOT / "notebooks")
    wiring = dict(profile="smoke", report_dir="/r", work="/w", source="", h5="/w/s.h5", checkpoint="/w/b.pt")
    plan = plan_study(nbs, {"train": {"augment": 0.3}, "tune": {"n_trials": 2}}, **wiring)
    takers = [s for s, p in plan.items() if "overrides" in p]
    assert takers == ["02_train_cnn", "03_optuna", "04_evaluate", "05_live_video"]
    assert all(plan[s]["overrides"] == {"train": {"augment": 0.3}, "tune": {"n_trials": 2}} for s in takers)
    with pytest.raises(UserError, match=r"train.augmnt: TrainConfig has no such field"):
        plan_study(nbs, {"train": {"augmnt": 0.3}}, **wiring)
    from fer_lib.study import StudyError
    with pytest.raises(StudyError, match=r"-p train.epochs=\.\.\."):  # the old per-notebook spelling says the new one
        plan_study(nbs, {"02_train_cnn": {"epochs": 3}}, **wiring)


def test_notebook_parameters_are_the_profile_paths_and_overrides():
    from fer_lib.study import read_parameters
    recipe_fields = {f.name for cls in STEPS.values() for f in dataclasses.fields(cls)} - {"data", "out", "seed"}
    for nb in list_notebooks(ROOT / "notebooks"):
        params = read_parameters(nb)
        assert "profile" in params
        leaked = sorted(set(params) & recipe_fields)
        assert not leaked, f"{nb.name}: recipe fields {leaked} belong in configs/profiles/, not the parameters cell"


def test_describe_profile_times_a_notebook_from_the_studies_manifests(tmp_path):
    import json
    from fer_lib.profiles import describe_profile
    (tmp_path / "runs" / "reports" / "smoke-real").mkdir(parents=True)   # where make study-smoke writes
    (tmp_path / "runs" / "reports" / "smoke-real" / "manifest.json").write_text(json.dumps({
        "run": "smoke-real", "profile": "smoke", "start": "2026-12-07T09:00:00+00:00",
        "environment": {"cpu": "Some CPU", "cpu_count": 2},
        "notebooks": [{"name": "04_evaluate", "status": "ok", "wall_s": 42.4, "end": "2026-12-07T09:01:00+00:00"}]}))
    text = describe_profile("smoke", "04", root=tmp_path)
    assert text.startswith("profile 'smoke'")
    assert "smoke: this notebook took 42 s in the study runs/reports/smoke-real/ of 2026-12-07 (Some CPU, 2 cores)" in text
    assert "full: no full study in this checkout" in text          # no guess where nothing was measured
    assert "profile = 'full' in the parameters cell" in text
    assert "no smoke study" in describe_profile("smoke", "02", root=tmp_path)
