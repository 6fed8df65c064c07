"""Fuzzed checkpoint JSON: model checkpoints (best.json) and the training state `--resume` reads (last.json).

A model checkpoint that reads must be one every consumer can use (evaluate,
export, Recognizer read `input` and `preprocessing`) and that builds; a
training state whose last.json was damaged must not be resumed from: `prev` is used.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from grefel.config import to_dict
from grefel.labels import CANONICAL_CLASSES
from grefel.models import build_from_checkpoint, create_model, list_models
from grefel.models.model_file import read_model_checkpoint, save_model_checkpoint
from grefel.training.state import load_training_state, save_training_state
from reliability.conftest import fuzz_settings, generated, outcome, training_state_info
from training_helpers import TINY_MODEL

# Integers stay small: a model built from a fuzzed `depth` or `embed_dim` must not exhaust the CI machine.
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-64, 256), st.floats(), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5)
CHECKPOINT_KEYS = ["format", "preset", "model", "class_names", "serve", "temperature", "input", "preprocessing",
                   "weights_sha256", "tta_flip"]


class Short:
    """A fixture value or drawn case that hypothesis prints as its label, not as a page of JSON."""

    def __init__(self, label: str, *values) -> None:
        self.label, self.values = label, values

    def __repr__(self) -> str:
        return self.label

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(self.label)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Short:
    """A real tiny grefel_small checkpoint: values (stem, its JSON)."""
    stem = tmp_path_factory.mktemp("fuzz-checkpoint") / "best"
    torch.manual_seed(0)
    model = create_model("grefel_small", pretrained=False, **TINY_MODEL)
    cfg = model.config
    save_model_checkpoint(stem, model, {
        "preset": "grefel_small", "model": to_dict(cfg), "class_names": list(CANONICAL_CLASSES),
        "input": {"size": cfg.input_size, "channels": cfg.in_chans, "value_range": [0.0, 1.0]},
        "preprocessing": {"color": "rgb", "crop_size": 48}, "serve": "primary", "temperature": 1.0,
        "tta_flip": False})
    return Short(f"checkpoint {stem}", stem, json.loads(stem.with_suffix(".json").read_text()))


def usable(info: dict) -> None:
    """What evaluate / export / Recognizer read from an accepted checkpoint without further checks."""
    assert info["class_names"] == list(CANONICAL_CLASSES[:len(info["class_names"])]), "class_names"
    assert info["preset"] in list_models() and 0.01 <= float(info["temperature"]) <= 100, "preset, temperature"
    assert isinstance(info.get("input"), dict) and isinstance(info["input"].get("size"), int), "input.size"
    assert info["input"].get("channels") in (1, 3), "input.channels"
    assert isinstance(info.get("preprocessing"), dict) and isinstance(info["preprocessing"].get("crop_size"), int)
    assert info["preprocessing"].get("color") in ("grey", "rgb"), "preprocessing.color"


MODEL_MUTATIONS = ["none", "drop_key", "replace_value", "class_names", "temperature", "preset", "model_args",
                   "sha256", "format"]


@st.composite
def checkpoint_json(draw, kind: str, good: dict) -> Short:
    """A mutated best.json: Short(note, info)."""
    info, note = mutate_checkpoint(draw, kind, copy.deepcopy(good), good)
    return Short(note, info)


def mutate_checkpoint(draw, kind: str, info: dict, good: dict) -> tuple[dict, str]:
    if kind == "drop_key":
        del info[key := draw(st.sampled_from(CHECKPOINT_KEYS))]
        return info, f"no {key}"
    if kind == "replace_value":
        info[key := draw(st.sampled_from(CHECKPOINT_KEYS))] = value = draw(JSON_VALUE)
        return info, f"{key} = {value!r}"
    if kind == "class_names":
        names = list(CANONICAL_CLASSES)
        change = draw(st.sampled_from(["permute", "truncate", "extend", "case"]))
        if change == "permute":
            names = draw(st.permutations(names))
        elif change == "truncate":
            names = names[:draw(st.integers(0, 7))]
        elif change == "extend":
            names.append("unknown")
        else:
            names[draw(st.integers(0, 7))] = names[0].title()
        info["class_names"] = names
        return info, f"class_names {names}"
    if kind == "temperature":
        info["temperature"] = value = draw(st.sampled_from(
            [0, -1, 0.001, 1e9, float("nan"), float("inf"), "1.0", True, None, [1.0], 10**400, 2**63]))
        return info, f"temperature {value!r}"
    if kind == "preset":
        info["preset"] = value = draw(st.sampled_from(list_models() + ["grefel", "GREFEL_SMALL", "", "../x"]))
        return info, f"preset {value!r}"
    if kind == "model_args":
        key = draw(st.sampled_from(sorted(info["model"]) + ["name", "landmark_weights", "preset", "widths"]))
        info["model"][key] = value = draw(st.one_of(JSON_VALUE, st.sampled_from([40, 0, -8, "x", 7.5])))
        return info, f"model.{key} = {value!r}"
    if kind == "sha256":
        info["weights_sha256"] = value = draw(st.sampled_from(
            ["0" * 64, good["weights_sha256"][::-1], good["weights_sha256"].upper(), "", 0, [good["weights_sha256"]]]))
        return info, f"weights_sha256 {value!r}"
    if kind == "format":
        info["format"] = value = draw(st.sampled_from(["grefel-checkpoint/2", "", None, 1]))
        return info, f"format {value!r}"
    return info, "none"


@pytest.mark.parametrize("kind", MODEL_MUTATIONS)
@fuzz_settings(25)
@given(data=st.data())
def test_model_checkpoint_json_near_valid(checkpoint, kind, data):
    stem, good = checkpoint.values
    mutation = data.draw(checkpoint_json(kind, good), label="mutation")
    (info,), note = mutation.values, mutation.label
    generated("checkpoint best.json (near-valid)")
    stem.with_suffix(".json").write_text(json.dumps(info))
    read, error = outcome(read_model_checkpoint, stem)
    if kind == "none":
        assert error is None, error
    if kind in ("sha256", "format") or (kind == "preset" and info["preset"] not in list_models()):
        assert error is not None, f"{note} was accepted"
    if read is not None:
        usable(read[1])
        built, _ = outcome(build_from_checkpoint, stem)
        if built is not None:
            model, built_info = built
            assert model.config.num_classes == len(built_info["class_names"]) and not model.training


@fuzz_settings(150)
@given(content=st.one_of(
    st.binary(max_size=300),
    st.sampled_from(["[" * 100_000, '{"a": ' * 50_000, "1" * 5000, '{"temperature": 1e400}', "NaN", "{}", "[]",
                     '{"format": "grefel-checkpoint/1"}', '"\\ud800"']).map(str.encode)))
def test_model_checkpoint_json_random_bytes(checkpoint, content):
    stem, _ = checkpoint.values
    generated("checkpoint best.json (random bytes)")
    stem.with_suffix(".json").write_bytes(content)
    read, _ = outcome(read_model_checkpoint, stem)
    assert read is None, "a checkpoint without a valid JSON contract was accepted"


# ---------------------------------------------------------------- training state (last.json)

STATE_MUTATIONS = ["drop_key", "replace_value", "not_json", "truncated"]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-state")


@pytest.mark.parametrize("kind", STATE_MUTATIONS)
@fuzz_settings(20)
@given(data=st.data())
def test_training_state_json_falls_back_to_prev(state_dir, kind, data):
    generated("training state last.json")
    save_training_state(state_dir, {"w": torch.zeros(3)}, training_state_info(1))
    save_training_state(state_dir, {"w": torch.ones(3)}, training_state_info(2))
    last = state_dir / "last.json"
    info = json.loads(last.read_text())
    if kind == "drop_key":
        del info[data.draw(st.sampled_from(sorted(info)), label="key")]
        content = json.dumps(info).encode()
    elif kind == "replace_value":
        info[data.draw(st.sampled_from(sorted(info)), label="key")] = data.draw(JSON_VALUE, label="value")
        content = json.dumps(info).encode()
    elif kind == "not_json":
        content = data.draw(st.binary(max_size=200), label="bytes")
    else:
        text = last.read_bytes()
        content = text[:data.draw(st.integers(0, len(text) - 2), label="cut")]
    last.write_bytes(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, error = outcome(load_training_state, state_dir)
    assert error is None, f"prev was intact: {error}"
    tensors, state, which = loaded
    if which == "last":  # only if what was saved reads back (the damage changed nothing train reads)
        saved = training_state_info(2)
        changed = sorted(k for k in saved if state.get(k, KeyError) != saved[k])
        assert not changed, f"a damaged last.json was chosen over prev (changed: {changed})"
        assert torch.equal(tensors["w"], torch.ones(3))
    else:
        assert state["epoch"] == 1 and torch.equal(tensors["w"], torch.zeros(3))
        assert any("resuming from" in str(w.message) for w in caught), "no warning on falling back to prev"
