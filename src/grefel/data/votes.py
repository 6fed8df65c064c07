"""FERPlus vote counts -> targets, exactly as Microsoft's reference reader does it.

Microsoft/FERPlus src/ferplus.py (`_process_data`, `load_folders`) defines the
four label modes; published sample counts (e.g. 3,137 majority test images)
come from that code, so `process_votes` reproduces it line by line, quirks
included (ties, the unknown/NF early stop). Note that its multi_target rule
keeps counts >= 30% of the *total* remaining votes and drops samples where
those cover <= 50% of the votes.
"""

from __future__ import annotations

import sys

import numpy as np

from grefel.labels import NUM_CLASSES

NUM_VOTE_COLUMNS = NUM_CLASSES + 2  # 8 emotions, unknown, NF (not a face)
MULTI_TARGET_EPSILON = 0.001


def process_votes(votes, mode: str) -> list[float] | None:
    """Microsoft's `_process_data` on 10 vote counts: normalised weights, or None where it forces 'unknown'."""
    raw = [float(v) for v in votes]
    size = len(raw)
    for i in range(size):  # a single vote is treated as noise
        if raw[i] < 1.0 + sys.float_info.epsilon:
            raw[i] = 0.0
    sum_list = sum(raw)
    emotion = [0.0] * size
    if mode == "majority":
        maxval = max(raw)
        if maxval <= 0.5 * sum_list:
            return None
        emotion[raw.index(maxval)] = maxval  # first maximum, as np.argmax
    elif mode in ("probability", "crossentropy"):
        sum_part, count, valid = 0.0, 0, True
        while sum_part < 0.75 * sum_list and count < 3 and valid:
            maxval = max(raw)
            for i in range(size):
                if raw[i] == maxval:
                    emotion[i] = maxval
                    raw[i] = 0
                    sum_part += emotion[i]
                    count += 1
                    if i >= NUM_CLASSES:  # unknown / NF reached: stop taking emotions
                        valid = False
                        if sum(emotion) > maxval:  # emotions came before it: do not keep unknown / NF
                            emotion[i] = 0
                            count -= 1
                        break
        if sum(emotion) <= 0.5 * sum_list or count > 3:
            return None
    elif mode == "multi_target":
        for i in range(size):
            if raw[i] >= 0.3 * sum_list:
                emotion[i] = raw[i]
        if sum(emotion) <= 0.5 * sum_list:
            return None
    else:
        raise ValueError(f"unknown FERPlus label mode {mode!r}")
    total = sum(emotion)
    return [e / total for e in emotion]


def votes_to_targets(votes: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Apply a label mode to (N, 10) vote counts.

    Returns (kept row indices (K,), float32 (K, 8) target distributions, drop reason -> count),
    following `load_folders`: a sample whose top weight is unknown or NF is dropped, the rest
    keep the 8 emotion weights renormalised.
    """
    forced = "no_majority" if mode == "majority" else "ambiguous_votes"
    keep: list[int] = []
    targets: list[list[float]] = []
    dropped: dict[str, int] = {}
    for row, counts in enumerate(votes.tolist()):
        emotion = process_votes(counts, mode)
        reason = None
        if emotion is None:
            reason = forced
        elif emotion.index(max(emotion)) >= NUM_CLASSES:  # first maximum, as np.argmax
            reason = "unknown_or_not_face"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        head = emotion[:NUM_CLASSES]
        total = sum(head)
        keep.append(row)
        targets.append([e / total for e in head])
    out = np.asarray(targets, dtype=np.float32).reshape(-1, NUM_CLASSES)  # (K, 8)
    return np.asarray(keep, dtype=np.int64), out, dropped
