"""Where a dataset comes from: `DataSource`, also the `data:` config section (grefel.data.load reads it).

This module stays light (no torch, no cv2 at import): configs and commands import it for `DataSource`.
"""

from __future__ import annotations

from dataclasses import dataclass

from grefel.errors import DataError
from grefel.labels import LABEL_ORDERS

FORMATS = ("ferplus", "fer2013", "csv", "folder")
SPLITS = ("train", "valid", "test")
LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")
COLORS = ("grey", "rgb")


@dataclass(frozen=True)
class DataSource:
    format: str = "ferplus"
    root: str | None = None          # ferplus: ROOT with FER2013{Train,Valid,Test}/; folder: image root;
                                     # csv: folder with train.csv / val.csv / test.csv
    csv: str | None = None           # csv format: one CSV file (then the split is only a name)
    fer2013_csv: str | None = None
    ferplus_csv: str | None = None   # fer2013new.csv; default: looked for beside fer2013_csv
    list_file: str | None = None     # folder format: `path,label` lines, paths relative to `root` or the list file
    label_order: str = "canonical"   # how integer labels in a list file are read (key of LABEL_ORDERS)
    image_size: int | None = None    # folder format: decode size (square); default 100
    color: str | None = None         # "grey" | "rgb"; default grey, rgb for folder
    skip_bad: bool = False
    cache_dir: str | None = None     # default $GREFEL_CACHE_DIR, else ~/.cache/grefel
    use_cache: bool = True

    def resolved_color(self) -> str:
        return self.color or ("rgb" if self.format == "folder" else "grey")

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"unknown data format {self.format!r}; expected one of {', '.join(FORMATS)}")
        if self.color is not None and self.color not in COLORS:
            raise DataError(f"unknown color {self.color!r}; expected one of {', '.join(COLORS)}")
        if self.label_order not in LABEL_ORDERS:
            raise DataError(f"unknown label order {self.label_order!r}; expected one of {', '.join(LABEL_ORDERS)}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 8):
            raise DataError(f"image size {self.image_size!r}: expected an integer of at least 8 pixels")
