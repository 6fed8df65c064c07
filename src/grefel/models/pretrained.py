"""The pretrained sources a preset's parts accept, and the one loader that applies them.

Each preset declares, beside its definition, a mapping from a slot name to a
`PretrainedSource`: which part it fills, how it loads, and the file shipped in
`grefel/weights` that fills it by default. `create_model(name, pretrained=...)`
(grefel.models.factory) applies them through `apply_pretrained`; a source
named for a slot the preset lacks is a one-line ConfigError. Adding a
pretrained branch is one loader and one `PretrainedSource` here, and one entry
in the presets that take it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping

from torch import nn

from grefel.errors import ConfigError, WeightsError
from grefel.fileio import load_state_dict, unprefixed
from grefel.models.dlib_resnet import DLIB_WEIGHTS, DlibResNet
from grefel.models.face_branch import load_face_branch
from grefel.models.ir import IRBackbone, load_ir50
from grefel.models.model_file import load_strict, read_model_checkpoint
from grefel.models.vgg import VGGBackbone

LANDMARK_WEIGHTS = "mobilefacenet_landmark68.safetensors"


def shipped_weights(name: str) -> Path:
    return Path(str(resources.files("grefel") / "weights" / name))


@dataclass(frozen=True)
class PretrainedSource:
    part: str                                    # what it fills, as messages name it: "landmark branch", ...
    applies: Callable[[nn.Module], bool]         # whether this model (as configured) has that part
    load: Callable[[nn.Module, Path], str]       # fill it from a file; returns what was loaded, for the log
    shipped: str | None = None                   # a file in grefel/weights that fills it by default


def load_landmark_weights(model: nn.Module, path: str | Path) -> str:
    """Load the 68-point MobileFaceNet into `model.landmarks.net` strictly (all 333 tensors)."""
    state = load_state_dict(path)
    net = model.landmarks.net
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:3])}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise WeightsError(f"{path}: not a MobileFaceNet landmark state_dict: " + "; ".join(parts))
    net.load_state_dict(state, strict=True)
    return f"landmark network: {len(state)} tensors from {path}"


def load_dlib_resnet(path: str | Path | None = None) -> DlibResNet:
    """dlib's face-recognition ResNet with the shipped converted weights (or `path`), float32."""
    path = shipped_weights(DLIB_WEIGHTS) if path is None else path
    net = DlibResNet()
    state = {k: v.float() for k, v in load_state_dict(path).items()}
    own = net.state_dict()
    if sorted(state) != sorted(own) or any(state[k].shape != own[k].shape for k in own):
        raise WeightsError(f"{path}: not a state_dict of dlib's face-recognition ResNet")
    net.load_state_dict(state, strict=True)
    return net


def _load_face(model: nn.Module, path: Path) -> str:
    count = load_face_branch(model.face, model.image_backbone, load_state_dict(path), str(path))
    return f"dlib face branch: {count} tensors from {path}"


def _load_ir50(model: nn.Module, path: Path) -> str:
    report = load_ir50(model.image_backbone, load_state_dict(path))
    return f"IR-50 weights: {report['loaded']} tensors loaded, {report['skipped']} unused skipped"


def _load_vit(model: nn.Module, path: Path) -> str:
    report = model.load_vit(load_state_dict(path))
    return f"ViT weights: {report['loaded']} tensors loaded, {report['skipped']} skipped"


def _load_cnn_image(model: nn.Module, path: Path) -> str:
    tensors, info = read_model_checkpoint(path)
    if info["preset"] != "cnn_baseline":
        raise ConfigError(f"{path}: a {info['preset']} checkpoint; expected a cnn_baseline one")
    load_strict(model.image_backbone, unprefixed(tensors, "features"), path)
    return f"image branch: started from the VGG stack of {path}"


LANDMARKS = PretrainedSource("landmark branch", lambda m: getattr(m, "landmarks", None) is not None,
                             load_landmark_weights, LANDMARK_WEIGHTS)
FACE = PretrainedSource("dlib face branch", lambda m: getattr(m, "face", None) is not None, _load_face, DLIB_WEIGHTS)
IR50 = PretrainedSource("IR image backbone", lambda m: isinstance(getattr(m, "image_backbone", None), IRBackbone),
                        _load_ir50)
VIT = PretrainedSource("ViT image backbone", lambda m: hasattr(m, "load_vit"), _load_vit)
CNN_IMAGE = PretrainedSource("VGG image branch",
                             lambda m: isinstance(getattr(m, "image_backbone", None), VGGBackbone), _load_cnn_image)
# Every slot name any preset uses, so a source for a slot a preset lacks is named in its error.
KNOWN = {"landmarks": LANDMARKS, "face": FACE, "ir50": IR50, "vit": VIT, "cnn_image": CNN_IMAGE}


def apply_pretrained(name: str, model: nn.Module, sources: Mapping[str, PretrainedSource],
                     pretrained: bool | Mapping[str, str | Path | None], log: Callable[[str], None] | None = None
                     ) -> None:
    """Fill `model`'s pretrained parts. `pretrained`: True (every shipped default), False (none), or
    {slot: file, "shipped" or None}: those slots from those files (None: left as initialised), the
    others from their shipped defaults."""
    if isinstance(pretrained, bool):
        chosen: dict[str, str | Path | None] = {slot: "shipped" if pretrained else None for slot in sources}
    else:
        for slot in pretrained:
            if slot not in sources:
                part = KNOWN[slot].part if slot in KNOWN else f"pretrained slot {slot!r}"
                raise ConfigError(f"preset {name} has no {part} (its pretrained slots: "
                                  f"{', '.join(sources) or 'none'})")
        chosen = {slot: pretrained.get(slot, "shipped") for slot in sources}
    for slot, value in chosen.items():
        source = sources[slot]
        if value is None or (value == "shipped" and source.shipped is None):
            continue
        if not source.applies(model):
            if value == "shipped":
                continue  # this configuration leaves the part out (e.g. landmark_branch: false)
            raise ConfigError(f"preset {name} as configured has no {source.part}")
        message = source.load(model, shipped_weights(source.shipped) if value == "shipped" else Path(value))
        if log is not None and value != "shipped":
            log(message)
