"""The README's results come from the committed checkpoint and its metrics.json, not from a keyboard."""
import json
from pathlib import Path

import pytest

from fer_lib.report import README_END, README_START, readme_markers, readme_results, readme_tuning, update_readme

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "models" / "vgg_small_fer2013.pt"
METRICS = ROOT / "reports" / "vgg_small_fer2013" / "metrics.json"


@pytest.mark.skipif(not (CKPT.exists() and METRICS.exists()), reason="no committed checkpoint/metrics yet")
def test_readme_results_match_committed_metrics():
    text = (ROOT / "README.md").read_text()
    block = text.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert block == readme_results(Path("models/vgg_small_fer2013.pt"),
                                   Path("reports/vgg_small_fer2013/metrics.json")).strip()


def test_update_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold 1%\n{README_END}\noutro\n")
    update_readme(readme, "new 2%")
    assert readme.read_text() == f"intro\n{README_START}\nnew 2%\n{README_END}\noutro\n"


def test_write_atomic_publishes_whole_files_or_nothing(tmp_path):
    from fer_lib.report import write_atomic
    write_atomic(tmp_path / "a" / "x.json", '{"ok": 1}')            # makes the folder
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    write_atomic(tmp_path / "c.png", lambda tmp: tmp.write_text(tmp.suffix))  # writers see the extension
    assert (tmp_path / "a" / "x.json").read_text() == '{"ok": 1}'
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.png").read_text() == ".png"

    def dies_halfway(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "b.bin", dies_halfway)
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"         # the previous file stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.bin", "c.png"]  # no partial file left


@pytest.mark.skipif(not CKPT.exists(), reason="no committed checkpoint yet")
def test_committed_config_is_the_checkpoints_recipe():
    import torch

    from fer_lib.train import resolve_config
    ck = torch.load(CKPT, map_location="cpu", weights_only=True)
    config = ROOT / "configs" / f"{ck['model_name']}.json"   # what README's reproduce line passes
    ours = vars(resolve_config(str(config)))
    ignore = ("data", "out", "progress")
    # fields the checkpoint predates were at their defaults (every engine addition is off by default)
    theirs = {**vars(resolve_config()), **ck["config"]}
    assert {k: v for k, v in ours.items() if k not in ignore} == {k: v for k, v in theirs.items() if k not in ignore}


def _metrics(path: Path, val: float, test: float, **cfg) -> Path:
    """A metrics.json as fer evaluate writes it, with just what the tuning table reads."""
    split = lambda acc: {"plain": {"accuracy": acc, "accuracy_ci95": [acc - 0.01, acc + 0.01]}}  # noqa: E731
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "checkpoint_epoch": 17, "val": split(val), "test": split(test),
        "train_config": {"model": "vgg_small", "optimizer": "sgd", "scheduler": "onecycle", "batch_size": 128,
                         "lr": 0.05, **cfg},
        "training": {"epochs_run": 18, "wall_s": 4620.0, "median_epoch_s": 240.0}}))
    return path


def test_readme_tuning_compares_recipes_and_chooses_on_publictest(tmp_path):
    default = _metrics(tmp_path / "default" / "metrics.json", 0.60, 0.62)
    tuned = _metrics(tmp_path / "tuned" / "metrics.json", 0.63, 0.61, model="baseline", optimizer="rmsprop",
                     scheduler="cosine", batch_size=16, lr=2.1947e-4)
    block = readme_tuning([("untuned default", default), ("Optuna best", tuned)])
    assert (f"| Optuna best | `baseline` | rmsprop / cosine | 16 | 0.000219 | 18 (best 17) | 77 min, 240 s/epoch "
            f"| 63.00% | 61.00% [60.00, 62.00] | +3.00 / -1.00 | `{tmp_path.as_posix()}/tuned/` |") in block
    assert "| 60.00% | 62.00% [61.00, 63.00] | reference |" in block
    # the choice follows PublicTest even where PrivateTest disagrees; both differences are printed
    assert block.endswith("Chosen on PublicTest: **Optuna best**, +3.00 points over untuned default on "
                          "PublicTest and -1.00 on PrivateTest.")
    assert readme_tuning([("untuned default", default), ("Optuna best", _metrics(
        tmp_path / "worse" / "metrics.json", 0.55, 0.70))]).endswith("so tuning did not help here.")


def test_readme_tuning_refuses_reports_without_the_recipe(tmp_path):
    old = tmp_path / "old" / "metrics.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"val": {}, "test": {}, "checkpoint_epoch": 3}))
    with pytest.raises(ValueError, match="old/metrics.json: no training config"):
        readme_tuning([("old", old)])


def test_update_readme_named_blocks(tmp_path):
    readme = tmp_path / "README.md"
    start, end = readme_markers("tuning")
    readme.write_text(f"a\n{README_START}\nr\n{README_END}\n{start}\nt\n{end}\n")
    update_readme(readme, "T2", "tuning")
    assert readme.read_text() == f"a\n{README_START}\nr\n{README_END}\n{start}\nT2\n{end}\n"
    with pytest.raises(ValueError, match="no <!-- other:start -->"):
        update_readme(readme, "x", "other")


def test_tuning_block_through_the_cli_with_the_search_sentence(tmp_path):
    from fer_lib.report import main
    study = tmp_path / "03_optuna.json"
    study.write_text(json.dumps({"n_trials": 11, "n_pruned": 2, "best_trial": 6, "best_value": 0.50661,
                                 "search": {"epochs_per_trial": 4, "train_fraction": 0.25},
                                 "default_trial": {"number": 0, "value": 0.44469}}))
    default = _metrics(tmp_path / "d" / "metrics.json", 0.60, 0.62)
    readme = tmp_path / "README.md"
    start, end = readme_markers("tuning")
    readme.write_text(f"x\n{start}\nold\n{end}\ny\n")
    main(["--readme", str(readme), "tuning", "--search", str(study), f"default={default}"])
    text = readme.read_text()
    assert (f"{start}\n<!-- made by: python -m fer_lib.report tuning --search {study} default={default} -->\n"
            f"The search (`{study.as_posix()}`): 11 trials of 4 epochs on a stratified 25% of Training, "
            "2 pruned. PublicTest accuracy of the untuned default (trial 0): 44.47%; of the best trial (6): 50.66%.\n\n"
            "| recipe |") in text
    assert text.startswith("x\n") and text.endswith(f"no other recipe beat it on PublicTest, so tuning did not help "
                                                    f"here.\n{end}\ny\n")
    with pytest.raises(SystemExit):
        main(["--readme", str(readme), "tuning", str(default)])         # LABEL= missing


def test_readme_tuning_block_is_what_its_command_makes(tmp_path, monkeypatch):
    import re
    import shlex
    from fer_lib.report import main
    text = (ROOT / "README.md").read_text()
    made_by = re.search(r"<!-- made by: python -m fer_lib.report (tuning .*?) -->", text)
    if not made_by:
        pytest.skip("README has no generated tuning block yet")
    copy = tmp_path / "README.md"
    copy.write_text(text)
    monkeypatch.chdir(ROOT)
    main(["--readme", str(copy), *shlex.split(made_by.group(1))])
    assert copy.read_text() == text


def test_committed_optuna_config_is_the_full_searchs_best():
    """configs/optuna_full_real.json, which README's retrain passes, is what the committed search chose."""
    study = json.loads((ROOT / "reports" / "full-real" / "03_optuna.json").read_text())
    config = json.loads((ROOT / "configs" / "optuna_full_real.json").read_text())
    assert config["train_config"] == study["best_params"] and config["best_trial"] == study["best_trial"]
    from fer_lib.train import resolve_config
    resolved = vars(resolve_config(str(ROOT / "configs" / "optuna_full_real.json")))   # fer train takes it as is
    assert {k: resolved[k] for k in study["best_params"]} == study["best_params"]


def test_readme_ablation_block_is_what_its_command_makes(tmp_path, monkeypatch):
    import re
    import shlex
    import shutil
    from fer_lib.report import main
    text = (ROOT / "README.md").read_text()
    made_by = re.search(r"<!-- made by: python -m fer_lib.report (ablation .*?) -->", text)
    if not made_by:
        pytest.skip("README has no generated ablation block yet")
    shutil.copytree(ROOT / "reports" / "ablation", tmp_path / "reports" / "ablation")  # the command writes beside the runs
    (tmp_path / "README.md").write_text(text)
    monkeypatch.chdir(tmp_path)
    main(["--readme", "README.md", *shlex.split(made_by.group(1))])
    assert (tmp_path / "README.md").read_text() == text
    assert (tmp_path / "reports" / "ablation" / "ablation.md").read_text() == \
        (ROOT / "reports" / "ablation" / "ablation.md").read_text()   # what notebook 02 shows


def test_ablation_table_needs_an_equal_budget(tmp_path):
    from fer_lib.report import ablation_table
    for name, epochs, acc in (("ref", 2, 0.5), ("more", 3, 0.6)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model": "baseline", "epochs": epochs}))
        (tmp_path / name / "history.json").write_text(json.dumps(
            [{"epoch": e + 1, "val_acc": acc, "train_acc": 0.4, "time_s": 1.0} for e in range(epochs)]))
    with pytest.raises(ValueError, match="not an equal budget"):
        ablation_table([tmp_path / "ref", tmp_path / "more"])
    table = ablation_table([tmp_path / "ref", tmp_path / "ref"])
    assert "| ref | (the reference) |" in table and "none at this budget" in table


ACCURATE = ROOT / "models" / "vgg_fer2013.pt"


@pytest.mark.skipif(not ACCURATE.exists(), reason="no accurate model committed yet")
def test_readme_accurate_block_matches_its_metrics():
    start, end = readme_markers("accurate")
    text = (ROOT / "README.md").read_text()
    block = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert block == readme_results(Path("models/vgg_fer2013.pt"), Path("reports/vgg_fer2013/metrics.json")).strip()
