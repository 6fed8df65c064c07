"""Near-valid row generation and the row-level oracle shared by the dataset fuzz tests.

A generated file is a list of rows whose intended content is known. Each row
carries a verdict: "good" (must load with exactly its label and image),
"bad" (must be rejected: an error without skip_bad, dropped with it) or
"either" (a lenient reader may accept it, but then with exactly the intended
content). Rows outside the loaded split are not expected at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from hypothesis import strategies as st

from grefel.data import DataSource, load_dataset
from grefel.errors import GrefelError
from grefel.labels import FERPLUS_VOTE_COLUMNS
from reliability.conftest import outcome

# Pixel tokens that are not an integer 0-255 (a lone sign, a float, another script's digit, ...).
BAD_PIXEL_TOKENS = ["1.5", "x", "0x10", "1e2", "nan", "\u0663", "\u00bd", "1_0", "+", "-", "7-", "--7", "\x00",
                    "\u00e9", "\ufeff7", "7\u2028", "\"7", "256", "-1", "1000", "99999999999999999999"]
BAD_LABELS = ["8", "-1", "happy", "", "1.0", "0x1", "1e0", "\u00b3", "1 2", "nan", "+-1", "\u2028"]
SEPARATORS = ["  ", "\t", " \t ", "\f"]
# `dropped` keys of the label rules (not bad rows): these may appear without skip_bad.
LABEL_RULE_DROPS = {"no_majority", "ambiguous_votes", "unknown_or_not_face", "not_a_face"}
LINE_ENDINGS = ["\n", "\r\n", "\r"]


@dataclass
class Row:
    label: int               # canonical class index the row means
    image: np.ndarray        # uint8 (48, 48)
    verdict: str = "good"    # good | bad | either
    expected: bool = True    # part of the loaded split (False: another split, not a face, ...)

    def __repr__(self) -> str:
        return f"Row({self.label}, {self.verdict}{'' if self.expected else ', not in split'})"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


@dataclass
class Case:
    """One generated input; the repr stays short so a failing example is readable."""
    files: dict[str, bytes]  # file name -> content
    rows: list[Row]
    mutation: str
    flags: dict = field(default_factory=dict)   # file_error / merges for `check`
    extra: dict = field(default_factory=dict)   # format-specific expectations

    def __repr__(self) -> str:
        shown = {name: data[:160] + (b"..." if len(data) > 160 else b"") for name, data in self.files.items()}
        return f"Case({self.mutation!r}, rows={self.rows}, flags={self.flags}, {self.extra}, files={shown})"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis prints falsifying examples with this
        printer.text(repr(self))


@dataclass
class Layout:
    """How the rows are written: line endings, blank lines, quoting."""
    ending: str = "\n"
    blank_after: set[int] = field(default_factory=set)
    quote_all: bool = False
    trailing_newline: bool = True


@st.composite
def layouts(draw, rows: int) -> Layout:
    return Layout(ending=draw(st.sampled_from(LINE_ENDINGS)),
                  blank_after=set(draw(st.lists(st.integers(-1, rows - 1), max_size=2))),
                  quote_all=draw(st.booleans()), trailing_newline=draw(st.booleans()))


def quote(value: str, always: bool) -> str:
    if always or any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def render(header: list[str] | None, rows: list[list[str]], layout: Layout, raw: set[int] = frozenset()) -> str:
    """CSV text; rows in `raw` are written verbatim (their fields are joined without quoting)."""
    lines = [] if header is None else [",".join(quote(h, layout.quote_all) for h in header)]
    if -1 in layout.blank_after and header is not None:
        lines.append("")
    for i, fields in enumerate(rows):
        lines.append(",".join(fields) if i in raw else ",".join(quote(f, layout.quote_all) for f in fields))
        if i in layout.blank_after:
            lines.append("")
    return layout.ending.join(lines) + (layout.ending if layout.trailing_newline else "")


PIXEL_MUTATIONS = ["pixel_token", "pixel_sign", "pixel_drop", "pixel_add", "pixel_separator", "pixel_pad",
                   "pixel_comma"]
LABEL_MUTATIONS = ["label_bad", "label_pad", "label_zero", "label_sign", "label_digit"]


def mutate_pixels(draw, text: str, kind: str) -> tuple[str, str, str]:
    """One near-valid change (a PIXEL_MUTATIONS kind) to a pixels field: (new text, verdict, what was done)."""
    tokens = text.split(" ")
    k = draw(st.integers(0, len(tokens) - 1))
    if kind == "pixel_token":
        tokens[k] = draw(st.sampled_from(BAD_PIXEL_TOKENS))
        return " ".join(tokens), "bad", f"pixel #{k + 1} -> {tokens[k]!r}"
    if kind == "pixel_sign":  # a lone sign as one more token (2305 tokens)
        tokens.insert(draw(st.integers(0, len(tokens))), sign := draw(st.sampled_from(["+", "-"])))
        return " ".join(tokens), "bad", f"lone {sign!r} inserted"
    if kind == "pixel_drop":
        del tokens[k]
        return " ".join(tokens), "bad", f"pixel #{k + 1} removed"
    if kind == "pixel_add":
        tokens.insert(k, "7")
        return " ".join(tokens), "bad", f"pixel inserted at #{k + 1}"
    if kind == "pixel_separator":
        k = min(k, len(tokens) - 2)
        sep = draw(st.sampled_from(SEPARATORS))
        return " ".join(tokens[:k + 1]) + sep + " ".join(tokens[k + 1:]), "good", f"separator {sep!r} after #{k + 1}"
    if kind == "pixel_pad":
        pad = draw(st.sampled_from([" ", "\t", "  "])), draw(st.sampled_from(["", " ", "\t"]))
        return pad[0] + text + pad[1], "good", f"pixels padded {pad!r}"
    assert kind == "pixel_comma", kind
    return " ".join(tokens[:k]) + "," + " ".join(tokens[k:]), "bad", f"comma before pixel #{k + 1}"


def mutate_label(draw, label: int, kind: str) -> tuple[str, str, str]:
    """One change (a LABEL_MUTATIONS kind) to an integer label field: (new text, verdict, what was done)."""
    text = {"label_pad": f" {label}\t", "label_zero": f"0{label}", "label_sign": f"+{label}",
            "label_digit": chr(0x0660 + label)}.get(kind)  # an Arabic-Indic digit, which int() reads
    if text is None:
        text = draw(st.sampled_from(BAD_LABELS))
    verdict = {"label_bad": "bad", "label_pad": "good", "label_zero": "good"}.get(kind, "either")
    return text, verdict, f"label {label} -> {text!r}"


def majority_votes(draw, label: int) -> list[str]:
    """10 FERPlus vote counts with a clear majority for `label` (a lone vote elsewhere is noise)."""
    votes = [0] * len(FERPLUS_VOTE_COLUMNS)
    votes[label] = draw(st.integers(6, 10))
    votes[draw(st.integers(0, len(votes) - 1))] += draw(st.integers(0, 1))
    return [str(v) for v in votes]


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def write_case(folder: Path, case: Case) -> None:
    for name, data in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def load_both(split: str, **source) -> list[tuple[bool, object, GrefelError | None]]:
    """(skip_bad, dataset, error) for the same files read without and with skip_bad (no cache)."""
    def load(skip_bad: bool):
        return load_dataset(DataSource(use_cache=False, skip_bad=skip_bad, **source), split, "majority")
    return [(skip_bad, *outcome(load, skip_bad)) for skip_bad in (False, True)]


def loaded_rows(dataset) -> list[tuple[int, bytes]]:
    return [(int(label), image.tobytes()) for label, image in zip(dataset.labels, dataset.images)]


def check(rows: list[Row], dataset, error: GrefelError | None, *, skip_bad: bool, file_error: bool = False,
          merges: bool = False, names: tuple[str, ...] = ()) -> None:
    """The oracle: what must load, what must fail, and that nothing loads silently partial.

    `names`: the files an error must name (any one of them).
    """
    expected = [r for r in rows if r.expected]
    good = [(r.label, r.image.tobytes()) for r in expected if r.verdict == "good"]
    allowed = [(r.label, r.image.tobytes()) for r in expected if r.verdict != "bad"]
    if file_error or (not skip_bad and any(r.verdict == "bad" for r in rows)):
        assert error is not None, f"a file with a bad row loaded as {len(dataset)} rows"
        assert not names or any(n in str(error) for n in names), f"the error names none of {names}: {error}"
        return
    if error is not None:
        # Refusing is right only when nothing valid is left, or (without skip_bad) for a lenient row.
        lenient = any(r.verdict == "either" for r in rows)
        assert not good or merges or (lenient and not skip_bad), f"a file without a bad row was refused: {error}"
        return
    got = loaded_rows(dataset)
    assert len(dataset.ids) == len(got) == len(dataset.targets)
    assert dataset.images.dtype == np.uint8 and dataset.images.shape[1:] == (48, 48)
    assert np.allclose(dataset.targets.sum(1), 1.0) and ((dataset.labels >= 0) & (dataset.labels < 8)).all()
    if not skip_bad:
        assert got == allowed, "the rows loaded are not the rows written"
        assert set(dataset.dropped) <= LABEL_RULE_DROPS, f"rows dropped without skip_bad: {dataset.dropped}"
        return
    remaining = iter(allowed)
    assert all(row in remaining for row in got), "skip_bad loaded a row that was not written, or out of order"
    if not merges:
        assert set(good) <= set(got), "skip_bad dropped a good row"
        skipped = sum(n for reason, n in dataset.dropped.items() if reason not in LABEL_RULE_DROPS)
        bad = sum(r.verdict == "bad" for r in rows)
        assert skipped == bad + len(allowed) - len(got), f"dropped {dataset.dropped} for {bad} bad rows"
