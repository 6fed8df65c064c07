"""Canonical expression classes and the conversions into them.

Every dataset maps its labels to the canonical (FERPlus) order here and
nowhere else. A name or order that does not map is an error, never a silent
remap.
"""

from __future__ import annotations

from grefel.errors import DataError

# The FERPlus order; all targets inside grefel are indices into this tuple.
CANONICAL_CLASSES: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
)
NUM_CLASSES = len(CANONICAL_CLASSES)

# fer2013.csv `emotion` column (Goodfellow et al. 2013): 0=Angry ... 6=Neutral.
FER2013_ORDER: tuple[str, ...] = (
    "anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral",
)
# RAF-DB basic-emotion labels 1..7 (list_patition_label.txt), stored here 0-based.
RAFDB_ORDER: tuple[str, ...] = (
    "surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral",
)
# AffectNet expression labels 0..7.
AFFECTNET_ORDER: tuple[str, ...] = (
    "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt",
)
# FERPlus vote columns in label.csv / fer2013new.csv: the 8 emotions, then two non-emotion columns.
FERPLUS_VOTE_COLUMNS: tuple[str, ...] = CANONICAL_CLASSES + ("unknown", "NF")

LABEL_ORDERS: dict[str, tuple[str, ...]] = {
    "canonical": CANONICAL_CLASSES,
    "ferplus": CANONICAL_CLASSES,
    "fer2013": FER2013_ORDER,
    "rafdb": RAFDB_ORDER,
    "affectnet": AFFECTNET_ORDER,
}

# Folder and file names seen in FER exports, lower-cased, mapped to canonical names.
SYNONYMS: dict[str, str] = {
    "neutral": "neutral", "neutrality": "neutral", "calm": "neutral", "ne": "neutral",
    "happiness": "happiness", "happy": "happiness", "happy_face": "happiness", "joy": "happiness",
    "ha": "happiness", "hap": "happiness",
    "surprise": "surprise", "surprised": "surprise", "su": "surprise", "sur": "surprise",
    "sadness": "sadness", "sad": "sadness", "sa": "sadness",
    "anger": "anger", "angry": "anger", "an": "anger", "ang": "anger",
    "disgust": "disgust", "disgusted": "disgust", "di": "disgust", "dis": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear", "fe": "fear",
    "contempt": "contempt", "contemptuous": "contempt", "co": "contempt",
}


def canonical_name(name: str, *, where: str = "") -> str:
    """Map a class name or synonym (any case, '-'/' ' as '_') to its canonical name."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in SYNONYMS:
        return SYNONYMS[key]
    prefix = f"{where}: " if where else ""
    raise DataError(
        f"{prefix}unknown class name {name!r}; expected one of {', '.join(CANONICAL_CLASSES)} "
        f"or a synonym such as happy, angry, sad, surprised, fearful, disgusted"
    )


def canonical_index(name: str, *, where: str = "") -> int:
    return CANONICAL_CLASSES.index(canonical_name(name, where=where))


def to_canonical(order: tuple[str, ...] | str) -> list[int]:
    """Canonical index of each position of a source label order (a name in LABEL_ORDERS or a tuple)."""
    if isinstance(order, str):
        if order not in LABEL_ORDERS:
            raise DataError(f"unknown label order {order!r}; expected one of {', '.join(LABEL_ORDERS)}")
        order = LABEL_ORDERS[order]
    indices = [canonical_index(name) for name in order]
    if len(set(indices)) != len(indices):
        raise DataError(f"label order {order} maps two source labels to the same class")
    return indices
