"""The five-point alignment template: where FERPlus crops put the eyes, nose tip and mouth corners.

Training crops from in-the-wild datasets and inference crops of detected faces are
both aligned onto it (grefel.inference.faces.align_face), and every checkpoint
records it, so a model sees at inference the framing it was trained on.
"""

from __future__ import annotations

import numpy as np

# Median position of the five points in 4000 FERPlus crops (2000 train + 2000 valid, NF votes 0),
# from the frozen 68-point landmark net averaged with its answer on the mirrored crop (alone it
# reads 0.016-0.019 crop widths too far right): `python scripts/derive_alignment_template.py`
# (defaults: --per-split 2000 --seed 0). Units: [0, 1] of the crop, 0 and 1 at its outer edges.
ALIGN_TEMPLATE = np.array([
    [0.3106, 0.4084],   # right eye (image left)
    [0.6882, 0.4042],   # left eye (image right)
    [0.5006, 0.5979],   # nose tip
    [0.3476, 0.7811],   # right mouth corner (image left)
    [0.6609, 0.7771],   # left mouth corner (image right)
], dtype=np.float32)
ALIGN_TEMPLATE.setflags(write=False)
