"""Run profiles: one name picks every notebook's budget.

    from fer_lib.profiles import profile_params
    p = profile_params("02_train_cnn", "smoke", epochs=None)   # None = take the profile's value

`smoke` runs the whole study in minutes on a 2-core CPU; `full` is the real study.
A notebook's parameters cell holds `profile` plus explicit overrides (None by default).
"""
from __future__ import annotations

PROFILES = {
    "smoke": {
        "01_preprocess": {},
        "02_train_cnn": {"model": "vgg_small", "epochs": 2, "train_fraction": 0.05, "batch_size": 64},
        "03_optuna": {"n_trials": 4, "epochs_per_trial": 2, "train_fraction": 0.03, "timeout": 300},
        "04_evaluate": {"tta": False, "n_bootstrap": 200},
        "05_live_video": {"max_seconds": None, "stream_runs": 20},
    },
    "full": {
        "01_preprocess": {},
        # Lighter regularization than TrainConfig's defaults: at this CPU's ~20-epoch budget the
        # default recipe underfits (train accuracy 63% with augmentation at epoch 16).
        "02_train_cnn": {"model": "vgg_small", "epochs": 18, "train_fraction": 1.0, "batch_size": 128,
                         "augment": 0.5, "erase": 0.0, "model_args": {"stage_drop": 0.0}},
        "03_optuna": {"n_trials": 30, "epochs_per_trial": 4, "train_fraction": 0.25, "timeout": 2400},
        "04_evaluate": {"tta": True, "n_bootstrap": 1000},
        "05_live_video": {"max_seconds": None, "stream_runs": 200},
    },
}


def profile_params(notebook: str, profile: str, **overrides) -> dict:
    """The profile's parameters for `notebook`, with every override that is not None on top."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    return {**PROFILES[profile][notebook], **{k: v for k, v in overrides.items() if v is not None}}
