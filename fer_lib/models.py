"""The CNN family of the study, behind a timm-style registry.

    from fer_lib.models import create_model, list_models
    model = create_model("vgg", activation="elu", drop_rate=0.3)   # logits (B, 7)

Every model takes (B, 1, 48, 48) normalized faces and returns (B, num_classes)
logits; the loss lives in training.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .assets import LIVE_MODEL, find_asset
from .errors import UserError

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
    """The architectures to train (an ensemble of trained ones is built by fer ensemble)."""
    return sorted(n for n in _MODELS if n != "ensemble")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; None kwargs are dropped so CLI defaults don't override the model's."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {list_models()}")
    return _MODELS[name](**{k: v for k, v in kwargs.items() if v is not None})


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _scaled(width: int, mult: float) -> int:
    """A layer width times the model's width multiplier, kept a multiple of 8 (at least 8)."""
    return width if mult == 1 else max(8, int(round(width * mult / 8)) * 8)


def _conv_bn(cin: int, cout: int, activation: str) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), _act(activation)]


class FerCNN(nn.Module):
    """Stages of `convs_per_stage` conv-BN-act layers, each stage ending in 2x2 max-pool,
    then either flatten (the original study's baseline) or global average pooling,
    a dense layer with dropout, and the classifier. width_mult scales every width and the dense layer."""

    def __init__(self, widths=(64, 128, 256), convs_per_stage=1, hidden=256, global_pool=False,
                 num_classes=7, in_chans=1, drop_rate=0.5, stage_drop=0.0, activation="relu", img_size=48,
                 width_mult=1.0):
        super().__init__()
        self.img_size = img_size  # the input side: 48, or the crop side of a crop-trained model
        widths, hidden = [_scaled(w, width_mult) for w in widths], _scaled(hidden, width_mult)
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


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 strided projection) shortcut (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  _act(activation),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.act = _act(activation)

    def forward(self, x):
        return self.act(self.body(x) + self.short(x))


class FerResNet(nn.Module):
    """A residual network for small faces: a 3x3 stem at full resolution, then one stage per
    width, each halving the side (48 -> 24 -> 12 -> 6 -> 3), global average pooling, dropout, linear.
    The width grows where the image is small, so most of the compute sits in the deeper stages."""

    def __init__(self, widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), stem_width=32, num_classes=7,
                 in_chans=1, drop_rate=0.3, stage_drop=0.0, activation="relu", img_size=48, width_mult=1.0):
        super().__init__()
        self.img_size = img_size
        widths, stem_width = [_scaled(w, width_mult) for w in widths], _scaled(stem_width, width_mult)
        layers, cin = _conv_bn(in_chans, stem_width, activation), stem_width
        for w, d in zip(widths, depths):
            for i in range(d):
                layers.append(BasicBlock(cin, w, 2 if i == 0 else 1, activation))
                cin = w
            if stage_drop:
                layers.append(nn.Dropout2d(stage_drop))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate),
                                  nn.Linear(cin, num_classes))
        for m in self.modules():  # zero-init the last BN of each block: every block starts as identity
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.body[-1].weight)

    def forward(self, x):  # (B, 1, S, S) -> (B, num_classes), any S >= 16
        return self.head(self.features(x))


@register_model
def resnet(**kw) -> nn.Module:
    """Ours: ResNet-18-like, stem 32 at 48 px, stages 64-128-256-512 at 24..3 px, global pool."""
    return FerResNet(**kw)


@register_model
def resnet_small(**kw) -> nn.Module:
    """resnet at half width (stem 16, stages 32-256): about vgg_small's compute."""
    return FerResNet(**{"widths": (32, 64, 128, 256), "stem_width": 16, **kw})


class Ensemble(nn.Module):
    """Several trained models as one: the mean of their softmax probabilities. forward returns its log,
    so softmax(forward(x)) is that mean and every caller of a model's logits takes an ensemble as it is.
    A member trained on crops sees the centre crop of the 48 px face, as its own Classifier would give it."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(create_model(m["model_name"], **m["model_args"]) for m in members)
        self.img_size = max(getattr(m, "img_size", 48) for m in self.members)

    def forward(self, x):  # (B, 1, S, S) -> (B, num_classes) log mean probability
        probs = [torch.softmax(m(center_crop(x, getattr(m, "img_size", 48))).float(), 1) for m in self.members]
        return torch.stack(probs).mean(0).clamp_min(1e-12).log()


def ensemble(members, **kw) -> nn.Module:
    """Trained checkpoints averaged (fer ensemble): members is a list of {model_name, model_args}."""
    if kw:
        raise ValueError(f"an ensemble takes only members; got {sorted(kw)}")
    return Ensemble(members)


_MODELS["ensemble"] = ensemble  # create_model rebuilds it from a checkpoint; not an architecture to train


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int | None = None, in_chans: int = 1) -> int:
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
    img_size = img_size or getattr(model, "img_size", 48)
    with torch.no_grad():
        model(torch.zeros(1, in_chans, img_size, img_size))
    model.train(was_training)
    for h in handles:
        h.remove()
    return int(sum(macs))


def count_train_flops(model: nn.Module, img_size: int | None = None, in_chans: int = 1) -> int:
    """FLOPs of a training step per image, forward and backward, as torch.utils.flop_counter.FlopCounterMode
    counts them (its convolutions and matrix products) on a batch of 2; the model itself is left as it was."""
    from torch.utils.flop_counter import FlopCounterMode
    img_size = img_size or getattr(model, "img_size", 48)
    m = copy.deepcopy(model).train()   # a training forward moves batch-norm statistics: not the caller's
    with FlopCounterMode(display=False) as counter:
        m(torch.zeros(2, in_chans, img_size, img_size)).sum().backward()
    return int(counter.get_total_flops()) // 2


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
# LIVE_MODEL (imported from assets, which finds its file in a wheel too) stays models.LIVE_MODEL for the callers.


CHECKPOINT_KEYS = ("model_name", "model_args", "state_dict", "mean", "std", "class_names")


def load_checkpoint(path) -> dict:
    """The checkpoint dict; plain data only, so weights_only loading is safe. A missing, damaged
    or foreign file raises UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, zero bytes, random bytes, a pickle of arbitrary objects
        kind = "empty file" if path.stat().st_size == 0 else type(e).__name__
        raise UserError(f"{path}: not a readable fer_lib checkpoint ({kind}); train one with fer train") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise UserError(f"{path}: not a fer_lib checkpoint (it lacks {', '.join(missing)}); "
                        "a plain state_dict cannot be loaded: save it with fer train")
    return ck


STORAGE_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}  # bytes per stored weight


def store_weights(state_dict: dict, storage: str = "fp32") -> tuple[dict, dict | None]:
    """A state_dict as a checkpoint stores it: fp32 as it is; fp16 (half the size); or int8 weight matrices
    and kernels with one fp16 scale per output channel (a quarter), biases and BN statistics in fp16.
    Returns (state_dict, scales for the checkpoint's `int8_scales`, None unless int8)."""
    if storage not in STORAGE_BYTES:
        raise UserError(f"--storage {storage}: choose from {', '.join(STORAGE_BYTES)}")
    if storage == "fp32":
        return dict(state_dict), None
    sd, scales = {}, {}
    for k, v in state_dict.items():
        if storage == "int8" and v.is_floating_point() and v.ndim >= 2:
            scale = (v.float().flatten(1).abs().amax(1) / 127).clamp_min(1e-12).half()
            sd[k] = (v.float() / scale.float().view(-1, *[1] * (v.ndim - 1))).round().clamp(-127, 127).to(torch.int8)
            scales[k] = scale
        else:
            sd[k] = v.half() if v.is_floating_point() else v
    return sd, scales if storage == "int8" else None


def dequantize(state_dict: dict, scales: dict) -> dict:
    """The float weights of a store_weights(..., "int8") state_dict."""
    return {k: v.float() * scales[k].float().view(-1, *[1] * (v.ndim - 1)) if k in scales else v
            for k, v in state_dict.items()}


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    model = create_model(ckpt["model_name"], **ckpt["model_args"])
    state = dequantize(ckpt["state_dict"], ckpt["int8_scales"]) if ckpt.get("int8_scales") else ckpt["state_dict"]
    model.load_state_dict(state)  # copies into fp32 parameters: fp16-stored weights load too
    return model.eval()


# ----------------------------------------------------------------------------- int8 inference

INT8_ENGINE = "x86"  # PyTorch's int8 CPU kernels (fbgemm and oneDNN): AVX2 is enough


def _prepare_int8(model: nn.Module) -> nn.Module:
    """A copy of model with observers after each operation (FX graph mode, per-channel weights)."""
    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_fx
    except ImportError:  # a torch newer than the pinned one may have dropped it
        raise UserError(f"int8 models need torch.ao.quantization, which torch {torch.__version__} lacks; "
                        "install the pinned torch==2.13.0") from None
    import torch.fx.config as fx_config
    side = int(getattr(model, "img_size", 48))
    # Node stack traces are for debugging the tracer; recording them imports torch._inductor, seconds per load
    stack_traces, fx_config.do_not_emit_stack_traces = fx_config.do_not_emit_stack_traces, True
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, not installed here
        warnings.simplefilter("ignore")
        try:
            return prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping(INT8_ENGINE),
                              (torch.zeros(1, 1, side, side),))
        except Exception as e:  # a model torch.fx cannot trace (data-dependent control flow)
            raise UserError(f"model {type(model).__name__} cannot be quantized: {str(e).splitlines()[0]}") from None
        finally:
            fx_config.do_not_emit_stack_traces = stack_traces


def calibrate_int8(model: nn.Module, batches) -> dict:
    """The activation ranges of post-training int8 quantization, observed on `batches` of normalized
    faces (N, 1, s, s): the observers' state, which a checkpoint keeps as quantization["observers"]."""
    prepared = _prepare_int8(model)
    with torch.no_grad():
        for x in batches:
            prepared(x)
    return {k: v for k, v in prepared.state_dict().items() if "activation_post_process" in k}


def int8_model(model: nn.Module, observers: dict) -> nn.Module:
    """model with int8 weights (one scale per output channel) and int8 activations in the ranges that
    calibrate_int8 observed; the same observers give the same network, bit for bit."""
    from torch.ao.quantization.quantize_fx import convert_fx
    prepared = _prepare_int8(model)
    expected = {k for k in prepared.state_dict() if "activation_post_process" in k}
    if set(observers) != expected:
        raise UserError(f"the checkpoint's int8 ranges do not match model {type(model).__name__}")
    prepared.load_state_dict(observers, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = convert_fx(prepared)
    q.img_size = int(getattr(model, "img_size", 48))  # Classifier crops to it; the traced graph drops attributes
    return q.eval()


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centred size x size window of (..., H, W)."""
    h, w = x.shape[-2:]
    i, j = (h - size) // 2, (w - size) // 2
    return x[..., i:i + size, j:j + size]


class Classifier:
    """A trained model with its preprocessing: uint8 faces (N, 48, 48) -> probabilities (N, 7).

    A model trained on random crops (input_size < 48) sees the centre crop of each face; faces
    already input_size on a side (the views of ten-crop evaluation) go in as they are."""

    def __init__(self, model: nn.Module, mean: float, std: float, class_names, meta: dict | None = None,
                 float_model: nn.Module | None = None):
        self.model, self.mean, self.std = model.eval(), float(mean), float(std)
        self.float_model = model if float_model is None else float_model  # an int8 model's float original
        self.class_names = list(class_names)
        self.meta = meta or {}
        self.input_size = int(getattr(model, "img_size", 48))

    def preprocess(self, faces) -> torch.Tensor:
        """uint8 faces (N, 48, 48) or (N, s, s) at the model's input side s -> normalized (N, 1, s, s)."""
        faces = torch.as_tensor(np.ascontiguousarray(faces))
        if faces.ndim == 2:
            faces = faces[None]
        sizes = {(48, 48), (self.input_size, self.input_size)}
        if faces.ndim != 3 or tuple(faces.shape[-2:]) not in sizes:
            raise ValueError(f"expected faces shaped (N, 48, 48), got {tuple(faces.shape)}")
        x = center_crop(faces, self.input_size)[:, None].float()
        return ((x / 255.0 - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def predict_logits(self, faces, batch_size: int = 512) -> torch.Tensor:
        faces = torch.as_tensor(np.ascontiguousarray(faces))
        faces = faces[None] if faces.ndim == 2 else faces
        out = [self.model(self.preprocess(faces[i:i + batch_size])).float()
               for i in range(0, len(faces), batch_size)]
        if not out:
            self.preprocess(faces)  # still checks the shape
        return torch.cat(out) if out else torch.zeros(0, len(self.class_names))

    def predict_proba(self, faces, batch_size: int = 512):
        """Softmax probabilities as a numpy array (N, num_classes), canonical class order."""
        return torch.softmax(self.predict_logits(faces, batch_size), dim=1).numpy()

    def predict(self, faces):
        return self.predict_proba(faces).argmax(1)


def resolve_checkpoint(path=None) -> Path:
    """`path`, or the live model when None: LIVE_MODEL under the working folder, else in the installed
    package or this checkout (notebooks run in notebooks/). UserError when the file is missing."""
    if path is None:
        path = find_asset(LIVE_MODEL)
        if path is None:
            raise UserError(f"{LIVE_MODEL}: the default live model is missing; give --checkpoint")
    if not Path(path).is_file():
        raise UserError(f"{path}: no such checkpoint file")
    return Path(path)


def load_model(path) -> Classifier:
    """Load a checkpoint written by fer_lib.train as a ready-to-use Classifier."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt).to(memory_format=torch.channels_last)
    meta = {k: ckpt.get(k) for k in ("model_name", "model_args", "epoch", "metric", "config", "history", "version",
                                     "members", "made_by")}
    quant = ckpt.get("quantization")
    if quant and INT8_ENGINE not in torch.backends.quantized.supported_engines:
        # an ARM CPU, say: the float weights predict nearly the same (reports/findings.md, "int8: the live model")
        warnings.warn(f"{path}: this CPU has no {INT8_ENGINE} int8 kernels; its float weights run instead",
                      stacklevel=2)
        quant = None
    if quant:  # fer quantize: the int8 network runs; the float one stays for Grad-CAM and as a teacher
        meta["quantization"] = {k: v for k, v in quant.items() if k != "observers"}
        return Classifier(int8_model(model, quant["observers"]), ckpt["mean"], ckpt["std"], ckpt["class_names"],
                          meta, float_model=model)
    return Classifier(model, ckpt["mean"], ckpt["std"], ckpt["class_names"], meta)


# ----------------------------------------------------------------------------- Grad-CAM

def grad_cam(clf, faces, target=None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM (Selvaraju et al. 2017) on the last nn.Conv2d: maps (N, 48, 48) in [0, 1] for
    class `target` (default: the predicted one), and the probabilities (N, C)."""
    model = clf.float_model  # an int8 model has no gradients: its float original explains it
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    acts = []
    handle = conv.register_forward_hook(lambda m, i, out: acts.append(out))  # (N, K, h, w)
    x = clf.preprocess(faces)  # (N, 1, s, s): the centre crop for a crop-trained model
    try:
        with torch.enable_grad():
            logits = model(x)
            tgt = logits.argmax(1) if target is None else torch.as_tensor(target).long()
            grads, = torch.autograd.grad(logits.gather(1, tgt[:, None]).sum(), acts[0])
    finally:
        handle.remove()
    weights = grads.mean((2, 3), keepdim=True)  # (N, K, 1, 1): each channel's importance
    cam = F.relu((weights * acts[0]).sum(1, keepdim=True)).detach()  # (N, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    pad = (48 - cam.shape[-1]) // 2  # back onto the 48x48 face; the border outside the crop is 0
    cam = F.pad(cam, (pad, 48 - cam.shape[-1] - pad, pad, 48 - cam.shape[-2] - pad))
    return cam.numpy(), torch.softmax(logits.detach(), 1).numpy()
