"""Fuzzed YAML training configs (load_config) and `--set` overrides.

A config that loads must be one `--resume` accepts again: the resolved config
written to config.yaml reads back equal. Anything else is a one-line GrefelError,
and so are model sizes the model cannot be built with, when `grefel train` starts.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from grefel.commands import main as grefel_main
from grefel.config import from_dict, to_dict
from grefel.training import TrainConfig, load_config
from reliability.conftest import fuzz_settings, generated, outcome
from training_helpers import TINY_MODEL, tiny_config

BASE = {
    "model": "grefel_small", "model_args": dict(TINY_MODEL),
    "data": {"source": {"format": "ferplus", "root": "/data/ferplus"}, "limit_train": 256, "limit_val": 128},
    "epochs": 2, "batch_size": 32, "eval_batch_size": 64, "num_workers": 0, "wandb": "off", "log_every": 4,
    "optim": {"lr": 0.001, "betas": [0.9, 0.999]}, "augment": {"hflip": 0.5}, "loss": {"anchor_weight": 1.0},
}
SECTIONS = [(), ("data",), ("data", "source"), ("optim",), ("augment",), ("loss",), ("model_args",)]
CHOICES = [("amp",), ("device",), ("serve",), ("select_metric",), ("wandb",), ("data", "label_mode"),
           ("data", "class_weighting"), ("optim", "name"), ("optim", "schedule"), ("augment", "backend")]
POSITIVE = [("epochs",), ("batch_size",), ("eval_batch_size",), ("optim", "lr")]
ANY_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
              st.text(max_size=8), st.sampled_from(["1e-3", "0x10", "yes", "~", ".inf", "2020-01-01"])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


def leaves(node: dict, prefix: tuple = ()) -> list[tuple]:
    """Every key path of `node` that holds a value (not a section)."""
    out = []
    for key, value in node.items():
        out += leaves(value, prefix + (key,)) if isinstance(value, dict) else [prefix + (key,)]
    return out


def set_path(data: dict, path: tuple, value) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


def check_loaded(cfg: TrainConfig) -> None:
    """A loaded config survives the config.yaml round trip `--resume` does, and keeps its documented ranges."""
    again = from_dict(TrainConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False)))
    assert again == cfg, "config.yaml would not read back equal: --resume would refuse this run"
    assert cfg.optim.lr > 0 and math.isfinite(cfg.optim.lr), f"optim.lr {cfg.optim.lr} accepted"
    assert min(cfg.epochs, cfg.batch_size, cfg.eval_batch_size) >= 1


MUTATIONS = ["none", "unknown_key", "wrong_type", "bad_choice", "not_positive", "non_string_key", "top_level",
             "huge_integer", "deep_nesting", "yaml_tag", "anchors", "encoding"]


@st.composite
def config_files(draw, kind: str) -> tuple[bytes, str]:
    """(YAML bytes, what was done): BASE with one mutation."""
    data = yaml.safe_load(yaml.safe_dump(BASE))
    text = None
    if kind == "unknown_key":
        section = draw(st.sampled_from(SECTIONS))
        set_path(data, section + (draw(st.sampled_from(["lrr", "epoch", "Model", "num-classes", "x" * 40])),), 1)
        note = f"unknown key in {section}"
    elif kind == "wrong_type":
        path = draw(st.sampled_from(leaves(BASE) + CHOICES + [("deterministic",), ("data", "source", "skip_bad")]))
        set_path(data, path, value := draw(ANY_VALUE))
        note = f"{'.'.join(path)} = {value!r}"
    elif kind == "bad_choice":
        path = draw(st.sampled_from(CHOICES))
        set_path(data, path, value := draw(st.sampled_from(["", "fp8", "CPU", "Primary", "none ", "\u00e9"])))
        note = f"{'.'.join(path)} = {value!r}"
    elif kind == "not_positive":
        path = draw(st.sampled_from(POSITIVE))
        set_path(data, path, value := draw(st.sampled_from([0, -1, -0.5, 0.0, float("nan"), float("-inf")])))
        note = f"{'.'.join(path)} = {value!r}"
    elif kind == "non_string_key":
        section = draw(st.sampled_from(SECTIONS))
        key = draw(st.sampled_from([1, None, True, 2.5]))
        node = data
        for part in section:
            node = node[part]
        node[key] = 1
        if draw(st.booleans()):  # and a misspelt key beside it
            node["lrr"] = 1
        note = f"key {key!r} in {section}"
    elif kind == "top_level":
        text = draw(st.sampled_from(["- 1\n- 2\n", "42\n", "null\n", "'text'\n", "", "---\n...\n", "[]\n"]))
        note = f"document {text!r}"
    elif kind == "huge_integer":
        text = yaml.safe_dump(data) + f"seed: {'9' * draw(st.integers(19, 6000))}\n"
        note = "huge integer literal"
    elif kind == "deep_nesting":
        depth = draw(st.sampled_from([50, 400, 3000]))
        text = "model_args: " + "[" * depth + "]" * depth + "\n"
        note = f"nesting depth {depth}"
    elif kind == "yaml_tag":
        text = yaml.safe_dump(data) + draw(st.sampled_from([
            "init_from: !!python/object/apply:os.getcwd []\n", "init_from: !!binary aGVsbG8=\n",
            "init_from: !!set {a, b}\n", "init_from: !custom x\n", "seed: !!float 1\n"]))
        note = "tag"
    elif kind == "anchors":
        text = "optim: &o {lr: 0.01}\nloss: *o\n" if draw(st.booleans()) else "a: &a [1]\nmodel_args: {x: *a}\n"
        note = "anchors"
    elif kind == "encoding":
        raw = yaml.safe_dump(data, allow_unicode=True) + "wandb_project: \"caf\u00e9 \u2713\"\n"
        encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"]))
        return raw.encode(encoding, errors="replace"), f"encoded {encoding}"
    else:
        note = "none"
    return (text if text is not None else yaml.safe_dump(data, allow_unicode=True)).encode(), note


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config") / "train.yaml"


@pytest.mark.parametrize("kind", MUTATIONS)
@fuzz_settings(25)
@given(data=st.data())
def test_yaml_config_near_valid(config_path, kind, data):
    content, note = data.draw(config_files(kind), label="config")
    generated("YAML config (near-valid)")
    config_path.write_bytes(content)
    cfg, error = outcome(load_config, str(config_path), [])
    if kind == "none" or (kind == "encoding" and note.endswith(("utf-8", "utf-8-sig"))):
        assert error is None, f"a valid config was refused: {error}"
    if kind in ("unknown_key", "bad_choice", "non_string_key"):
        assert error is not None, f"{note} was accepted"
    if cfg is not None:
        check_loaded(cfg)


@fuzz_settings(200)
@given(content=st.one_of(st.binary(max_size=300),
                         st.text(st.sampled_from("abdelmopst_:.-[]{}!&*|>'\"#\n 019\t\u00e9\ufeff"), max_size=200)
                         .map(str.encode)))
def test_yaml_config_random_bytes(config_path, content):
    generated("YAML config (random bytes)")
    config_path.write_bytes(content)
    cfg, _ = outcome(load_config, str(config_path), [])
    if cfg is not None:
        check_loaded(cfg)


OVERRIDE_KEYS = [".".join(p) for p in leaves(BASE) + CHOICES] + ["", ".", "optim..lr", "model_args", "data.source",
                                                                  "epochs.x", "a.b.c"]


@fuzz_settings(200)
@given(overrides=st.lists(st.tuples(st.sampled_from(OVERRIDE_KEYS),
                                    st.sampled_from(["", "=", "=="]),
                                    st.one_of(st.text(max_size=10), ANY_VALUE.map(lambda v: yaml.safe_dump(v).strip()))),
                          max_size=3))
def test_set_overrides(overrides):
    generated("--set overrides")
    cfg, _ = outcome(load_config, None, [key + sep + value for key, sep, value in overrides])
    if cfg is not None:
        check_loaded(cfg)


@pytest.mark.parametrize("override", ["branch_size=40", "num_heads=3", "embed_dim=-8", "dropout=2.0"])
def test_model_args_the_model_cannot_take_are_a_one_line_error(tmp_path, reliability_cache, capsys, override):
    """load_config checks model_args' types only; sizes the model cannot be built with must still fail
    as a one-line error (exit 2), not a traceback."""
    config = str(tiny_config(tmp_path))
    code = grefel_main(["train", "--config", config, "--output-dir", str(tmp_path / "out"),
                        "--set", f"model_args.{override}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
