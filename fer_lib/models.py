"""The CNN family of the study, behind a timm-style registry.

    from fer_lib.models import create_model, list_models
    model = create_model("vgg", activation="elu", drop_rate=0.3)   # logits (B, 7)

Every model takes (B, 1, 48, 48) normalized faces and returns (B, num_classes)
logits; the loss lives in training.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

_MODELS: dict = {}

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
}


def register_model(fn):
    """Decorator: make `fn(**kwargs) -> nn.Module` available to create_model by its name."""
    if fn.__name__ in _MODELS:
        warnings.warn(f"model {fn.__name__!r} registered twice; the last one wins")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; None kwargs are dropped so CLI defaults don't override the model's."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {list_models()}")
    return _MODELS[name](**{k: v for k, v in kwargs.items() if v is not None})


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _conv_bn(cin: int, cout: int, activation: str) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), _act(activation)]


class FerCNN(nn.Module):
    """Stages of `convs_per_stage` conv-BN-act layers, each stage ending in 2x2 max-pool,
    then either flatten (the original study's baseline) or global average pooling,
    a dense layer with dropout, and the classifier."""

    def __init__(self, widths=(64, 128, 256), convs_per_stage=1, hidden=256, global_pool=False,
                 num_classes=7, in_chans=1, drop_rate=0.5, stage_drop=0.0, activation="relu", img_size=48):
        super().__init__()
        layers, cin = [], in_chans
        for w in widths:
            for _ in range(convs_per_stage):
                layers += _conv_bn(cin, w, activation)
                cin = w
            layers.append(nn.MaxPool2d(2))
            if stage_drop:
                layers.append(nn.Dropout2d(stage_drop))
        self.features = nn.Sequential(*layers)
        side = img_size // 2 ** len(widths)
        flat = cin if global_pool else cin * side * side
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity(),
            nn.Flatten(),
            nn.Linear(flat, hidden, bias=False), nn.BatchNorm1d(hidden), _act(activation),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):  # (B, 1, 48, 48) -> (B, num_classes)
        return self.head(self.features(x))


@register_model
def baseline(**kw) -> nn.Module:
    """The original study's first CNN: 3 conv blocks 64-128-256, dense 256, dropout 0.5."""
    return FerCNN(**{"widths": (64, 128, 256), "hidden": 256, **kw})


@register_model
def improved(**kw) -> nn.Module:
    """The original study's second CNN: 5 conv blocks 32..512, global average pooling, dense 512."""
    return FerCNN(**{"widths": (32, 64, 128, 256, 512), "hidden": 512, "global_pool": True, **kw})


@register_model
def vgg(**kw) -> nn.Module:
    """Ours: VGG-style double-conv stages 64-128-256-512 (48 -> 3 px), flatten, dense 512."""
    return FerCNN(**{"widths": (64, 128, 256, 512), "convs_per_stage": 2, "hidden": 512,
                     "drop_rate": 0.4, "stage_drop": 0.1, **kw})


@register_model
def vgg_small(**kw) -> nn.Module:
    """A quarter of `vgg`'s compute: widths 32-256, for quick searches and smoke runs."""
    return FerCNN(**{"widths": (32, 64, 128, 256), "convs_per_stage": 2, "hidden": 256,
                     "drop_rate": 0.4, "stage_drop": 0.1, **kw})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int = 48, in_chans: int = 1) -> int:
    """Multiply-adds per image of the conv and linear layers, measured with forward hooks."""
    macs = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs.append(out.numel() // out.shape[0] * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, nn.Linear):
            macs.append(m.in_features * m.out_features)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_chans, img_size, img_size))
    model.train(was_training)
    for h in handles:
        h.remove()
    return int(sum(macs))


def summarize_models(names=None, **kwargs) -> list[dict]:
    """One row per registered model (pandas-friendly): name, parameters, multiply-adds per 48x48
    image, and the first line of its docstring. kwargs (e.g. activation) go to create_model."""
    rows = []
    for name in names or list_models():
        model = create_model(name, **kwargs)
        rows.append({"model": name, "params": count_params(model), "macs": count_macs(model),
                     "description": (_MODELS[name].__doc__ or "").strip().split("\n")[0]})
    return rows


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT_VERSION = 1


def load_checkpoint(path) -> dict:
    """The checkpoint dict; plain data only, so weights_only loading is safe."""
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    model = create_model(ckpt["model_name"], **ckpt["model_args"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


class Classifier:
    """A trained model with its preprocessing: uint8 faces (N, 48, 48) -> probabilities (N, 7)."""

    def __init__(self, model: nn.Module, mean: float, std: float, class_names, meta: dict | None = None):
        self.model, self.mean, self.std = model.eval(), float(mean), float(std)
        self.class_names = list(class_names)
        self.meta = meta or {}

    @torch.no_grad()
    def predict_logits(self, faces, batch_size: int = 512) -> torch.Tensor:
        faces = torch.as_tensor(faces)
        if faces.ndim == 2:
            faces = faces[None]
        if faces.ndim != 3 or faces.shape[-2:] != (48, 48):
            raise ValueError(f"expected faces shaped (N, 48, 48), got {tuple(faces.shape)}")
        out = []
        for i in range(0, len(faces), batch_size):
            x = (faces[i:i + batch_size, None].float() / 255.0 - self.mean) / self.std  # (B, 1, 48, 48)
            out.append(self.model(x.contiguous(memory_format=torch.channels_last)).float())
        return torch.cat(out) if out else torch.zeros(0, len(self.class_names))

    def predict_proba(self, faces, batch_size: int = 512):
        """Softmax probabilities as a numpy array (N, num_classes), canonical class order."""
        return torch.softmax(self.predict_logits(faces, batch_size), dim=1).numpy()

    def predict(self, faces):
        return self.predict_proba(faces).argmax(1)


def load_model(path) -> Classifier:
    """Load a checkpoint written by fer_lib.train as a ready-to-use Classifier."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt).to(memory_format=torch.channels_last)
    meta = {k: ckpt.get(k) for k in ("model_name", "model_args", "epoch", "metric", "config", "history", "version")}
    return Classifier(model, ckpt["mean"], ckpt["std"], ckpt["class_names"], meta)
