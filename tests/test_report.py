"""The README's results come from the committed checkpoint and its metrics.json, not from a keyboard."""
from pathlib import Path

import pytest

from fer_lib.report import README_END, README_START, readme_results, update_readme

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
    assert {k: v for k, v in ours.items() if k not in ignore} == \
        {k: v for k, v in ck["config"].items() if k not in ignore}
