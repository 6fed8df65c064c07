"""Decoded-dataset cache: one uncompressed .npz per source, keyed by a fingerprint of the source.

The fingerprint covers the label file's content and each image's (name, size,
mtime_ns), which is cheap to stat yet changes when an image is touched or
replaced. A cache file that cannot be read back is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from grefel.data.raw import BadRow, RawData
from grefel.fileio import atomic_open

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get("GREFEL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "grefel"


class Fingerprint:
    """A running sha256 over everything a decoded source depends on."""

    def __init__(self, *parts: object) -> None:
        self._hash = hashlib.sha256()
        self.add(CACHE_VERSION, *parts)

    def add(self, *parts: object) -> None:
        for part in parts:
            self._hash.update(repr(part).encode("utf-8") + b"\0")

    def add_bytes(self, data: bytes) -> None:
        self.add(hashlib.sha256(data).hexdigest())

    def add_file(self, path: Path) -> None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        self.add(str(path), digest.hexdigest())

    def add_stats(self, paths: Iterable[Path]) -> None:
        entries = []
        for path in paths:
            try:
                st = os.stat(path)
                entries.append(f"{path}\t{st.st_size}\t{st.st_mtime_ns}")
            except (OSError, ValueError):  # ValueError: a NUL byte in the name
                entries.append(f"{path}\tmissing")
        self._hash.update("\n".join(entries).encode("utf-8", "surrogateescape") + b"\0")

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def cached_raw(cache_dir: str | None, use_cache: bool, slug: str, identity: str,
               fingerprint: Fingerprint, build: Callable[[], RawData]) -> RawData:
    """Return the cached RawData for this fingerprint, or build, store and return it.

    `identity` names the source (its path and split) so entries for an older
    version of the same source are removed once a new one is written.
    """
    if not use_cache:
        return build()
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', slug)}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    path = folder / f"{stem}-{fingerprint.hexdigest()[:24]}.npz"
    raw = _read(path)
    if raw is not None:
        return raw
    raw = build()
    try:
        _write(path, raw)
        for stale in folder.glob(f"{stem}-*.npz"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError as exc:  # a read-only or full cache disk must not stop training
        warnings.warn(f"grefel: could not write dataset cache {path}: {exc}", stacklevel=2)
    return raw


def _write(path: Path, raw: RawData) -> None:
    arrays = {
        "origin": np.array(raw.origin),
        "images": raw.images,
        "ids": np.array(raw.ids, dtype=np.str_),
        "class_names": np.array(raw.class_names, dtype=np.str_),
        "bad_lines": np.array([b.line for b in raw.bad], dtype=np.int64),
        "bad_reasons": np.array([b.reason for b in raw.bad], dtype=np.str_),
        "bad_messages": np.array([b.message for b in raw.bad], dtype=np.str_),
        "dropped_keys": np.array(list(raw.dropped), dtype=np.str_),
        "dropped_counts": np.array(list(raw.dropped.values()), dtype=np.int64),
    }
    if raw.votes is not None:
        arrays["votes"] = raw.votes
    else:
        arrays["labels"] = raw.labels
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _read(path: Path) -> RawData | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return RawData(
                origin=str(z["origin"]),
                images=z["images"],
                ids=z["ids"].tolist(),
                class_names=tuple(z["class_names"].tolist()),
                votes=z["votes"] if "votes" in z.files else None,
                labels=z["labels"] if "labels" in z.files else None,
                bad=[BadRow(*b) for b in zip(z["bad_lines"].tolist(), z["bad_reasons"].tolist(),
                                             z["bad_messages"].tolist())],
                dropped=dict(zip(z["dropped_keys"].tolist(), z["dropped_counts"].tolist())),
            )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        warnings.warn(f"grefel: ignoring unreadable dataset cache {path} ({type(exc).__name__}); rebuilding",
                      stacklevel=3)
        return None
