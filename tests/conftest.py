"""Shared fixtures: synthetic data for a fresh clone, the real FER-2013 when present."""
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FER_PROGRESS", "0")  # nbval's kernels inherit it: no progress bars in the notebooks


def pytest_collection_finish(session):
    """The nbval notebooks resume what they find in runs/nbval (a finished training run is not trained
    again), so a leftover made by older code would hide a changed output that a fresh clone (CI) shows.
    When the set starts at notebook 01, which makes that folder's data, it starts from nothing."""
    from fer_lib.study import NBVAL_DIR, NBVAL_WORK
    if any(Path(str(item.path)) == NBVAL_DIR / "01_preprocess.ipynb" for item in session.items):
        shutil.rmtree(NBVAL_DIR / NBVAL_WORK, ignore_errors=True)  # as write_nbval_refs does before a full set


def real_zip_path() -> Path | None:
    """FER-2013 archive from $FER2013_ZIP or ../shared/fer2013/archive.zip; None if absent."""
    p = Path(os.environ.get("FER2013_ZIP", ROOT.parent / "shared" / "fer2013" / "archive.zip"))
    return p if p.exists() else None


def real_video_path() -> Path | None:
    p = Path(os.environ.get("FER_VIDEO", ROOT.parent / "shared" / "video" / "Megamind.avi"))
    return p if p.exists() else None


@pytest.fixture(scope="session")
def synthetic_h5(tmp_path_factory):
    """A small synthetic FER-shaped HDF5: 40/10/10 faces per class."""
    from fer_lib.synthetic import write_synthetic_h5
    return write_synthetic_h5(tmp_path_factory.mktemp("syn") / "synthetic.h5", n_per_class=(40, 10, 10), seed=0)


@pytest.fixture(scope="session")
def real_zip():
    p = real_zip_path()
    if p is None:
        pytest.skip("FER-2013 not present (set FER2013_ZIP)")
    return p


@pytest.fixture(scope="session")
def real_h5(real_zip, tmp_path_factory):
    """The real archive ingested once per test session (~10 s)."""
    from fer_lib.data import build_hdf5
    return build_hdf5(real_zip, tmp_path_factory.mktemp("real") / "fer2013.h5")


@pytest.fixture(scope="session")
def real_video():
    p = real_video_path()
    if p is None:
        pytest.skip("Megamind.avi not present (set FER_VIDEO)")
    return p


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_h5, tmp_path_factory):
    """A vgg_small trained for 2 epochs on the synthetic data (seconds), as a checkpoint path."""
    from fer_lib.train import fit, resolve_config
    out = tmp_path_factory.mktemp("ckpt")
    cfg = resolve_config(data=str(synthetic_h5), out=str(out), model="vgg_small", epochs=2,
                         batch_size=32, lr=0.01, progress=False, seed=0)
    fit(cfg)
    return out / "best.pt"


@pytest.fixture(scope="session")
def crop_checkpoint(synthetic_h5, tmp_path_factory):
    """A second model unlike tiny_checkpoint: trained on 40-px crops, another seed."""
    from fer_lib.train import fit, resolve_config
    out = tmp_path_factory.mktemp("crop")
    fit(resolve_config(data=str(synthetic_h5), out=str(out), model="vgg_small", crop=40, epochs=1,
                       batch_size=32, lr=0.01, progress=False, seed=1))
    return out / "best.pt"


def _confident(path, out, gain=10.0):
    import torch

    from fer_lib.models import load_checkpoint
    ck = load_checkpoint(path)
    last = [k for k in ck["state_dict"] if k.startswith("head.") and k.endswith(".weight")][-1]
    for k in (last, last.replace("weight", "bias")):
        ck["state_dict"][k] = ck["state_dict"][k] * gain
    torch.save(ck, out)
    return out


@pytest.fixture(scope="session")
def confident():
    """confident(path, out, gain=10.0): a copy of a checkpoint with its classifier's logits scaled up. A
    2-epoch model on synthetic faces is nearly uniform; quantization is only tested where predictions are clear."""
    return _confident
