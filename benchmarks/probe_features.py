"""Linear probe of frozen face features on FERPlus: which pretrained network should the image branch start from?

For each candidate the features of N training faces and of every valid face
(majority labels) are extracted once, frozen, standardised on the training
features, and a multinomial logistic regression is fitted on the training
faces; the table gives valid accuracy and mean class accuracy. Candidates:
raw pixels, dlib's face-recognition ResNet (the shipped conversion) at the end
of each stage, 2x2-pooled and globally pooled, the same network at random
init, the frozen landmark MobileFaceNet, dlib + landmarks together, and the
shipped model's penultimate features (trained on these labels: an upper
reference, not a candidate).

    python benchmarks/probe_features.py --data-root ../shared/datasets/ferplus --train 8000 --output-json probe.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from grefel.data import DataSource, load_dataset
from grefel.fileio import atomic_write_json, load_state_dict
from grefel.metrics import accuracy, confusion_matrix, mean_class_accuracy
from grefel.models import build_from_checkpoint
from grefel.models.dlib_resnet import STAGE_NAMES, DlibResNet
from grefel.models.mobilefacenet import MobileFaceNet
from grefel.models.model_file import shipped_checkpoint
from grefel.models.pretrained import LANDMARK_WEIGHTS, load_dlib_resnet, shipped_weights


def images_to_tensor(images: np.ndarray, size: int, pad: float = 0.0) -> torch.Tensor:
    """uint8 (N, 48, 48) grey -> (N, 3, size, size) in [0, 1]; `pad` widens the crop by that fraction
    on each side with edge pixels (dlib's chips are looser than FERPlus's tight crops)."""
    x = torch.from_numpy(images).float().div(255.0).unsqueeze(1)          # (N, 1, 48, 48)
    if pad > 0:
        p = int(round(pad * x.shape[-1]))
        x = F.pad(x, (p, p, p, p), mode="replicate")
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1)


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch: int = 128) -> list[np.ndarray]:
    outs: list[list[np.ndarray]] = []
    for start in range(0, len(x), batch):
        parts = fn(x[start:start + batch])
        if not outs:
            outs = [[] for _ in parts]
        for o, p in zip(outs, parts):
            o.append(p.float().numpy())
    return [np.concatenate(o) for o in outs]


def pooled(maps: torch.Tensor, grid: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(maps, grid).flatten(1)


def dlib_features(net: DlibResNet, images: np.ndarray, size: int, pad: float) -> dict[str, np.ndarray]:
    def fn(x):
        maps = net.forward_stages(x)
        return [pooled(m, g) for m in maps for g in (1, 2)]
    feats = batched(fn, images_to_tensor(images, size, pad))
    names = [f"{s} {'global' if g == 1 else '2x2'}" for s in STAGE_NAMES for g in (1, 2)]
    return dict(zip(names, feats))


def landmark_features(images: np.ndarray) -> dict[str, np.ndarray]:
    net = MobileFaceNet().eval()
    net.load_state_dict(load_state_dict(shipped_weights(LANDMARK_WEIGHTS)))

    def fn(x):
        f = net.features(x)[-1]                                             # conv_6_sep: (B, 512, 7, 7)
        return [pooled(f, 1), pooled(f, 2)]
    g, p = batched(fn, images_to_tensor(images, 112))
    return {"MobileFaceNet conv_6_sep global": g, "MobileFaceNet conv_6_sep 2x2": p}


def shipped_features(images: np.ndarray) -> dict[str, np.ndarray]:
    model, info = build_from_checkpoint(shipped_checkpoint())
    if info["preset"] != "cnn_baseline":
        return {}
    size = info["input"]["size"]

    def fn(x):
        return [model.features(model.input_spec.image_input(x))[-1].mean((2, 3))]
    x = torch.from_numpy(images).float().div(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    return {"shipped cnn_baseline penultimate (trained on these labels)": batched(fn, F.interpolate(x, size=size))[0]}


def probe(train: np.ndarray, y_train: np.ndarray, valid: np.ndarray, y_valid: np.ndarray,
          class_names: list[str]) -> dict[str, float]:
    scaler = StandardScaler().fit(train)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(train), y_train)
    pred = clf.predict(scaler.transform(valid))
    cm = confusion_matrix(y_valid, pred, len(class_names))
    return {"accuracy": accuracy(y_valid, pred), "mean_class_accuracy": mean_class_accuracy(cm),
            "dims": int(train.shape[1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/datasets/ferplus")
    parser.add_argument("--train", type=int, default=8000, help="training faces (the first N of the train split)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[150], help="dlib input sizes to probe")
    parser.add_argument("--pads", type=float, nargs="+", default=[0.0], help="crop widenings to probe (fraction per side)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    source = DataSource(format="ferplus", root=args.data_root)
    train_ds, valid_ds = load_dataset(source, "train", "majority"), load_dataset(source, "valid", "majority")
    keep = np.random.default_rng(0).permutation(len(train_ds))[:args.train]
    x_tr, y_tr = train_ds.images[keep], train_ds.labels[keep]
    x_va, y_va = valid_ds.images, valid_ds.labels
    names = list(valid_ds.class_names)
    print(f"probe: {len(x_tr)} train faces, {len(x_va)} valid faces (majority labels)", flush=True)

    candidates: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(make, label=""):
        t = time.time()
        tr, va = make(x_tr), make(x_va)
        for k in tr:
            candidates[f"{k}{label}"] = (tr[k], va[k])
        print(f"  features{label or ''}: {', '.join(tr)} ({time.time() - t:.0f} s)", flush=True)

    add(lambda im: {"raw pixels (48x48)": im.reshape(len(im), -1).astype(np.float32)})
    dlib = load_dlib_resnet().eval()
    for size in args.sizes:
        for pad in args.pads:
            add(lambda im: dlib_features(dlib, im, size, pad), f" [dlib, {size} px, pad {pad:g}]")
    random_dlib = DlibResNet().eval()     # PyTorch's default init: the same network without face pretraining
    add(lambda im: {k: v for k, v in dlib_features(random_dlib, im, args.sizes[0], args.pads[0]).items()
                    if k.startswith("stage128")}, " [dlib architecture, random init]")
    add(landmark_features)
    add(shipped_features)
    dlib_key = f"stage128 2x2 [dlib, {args.sizes[0]} px, pad {args.pads[0]:g}]"
    lm_key = "MobileFaceNet conv_6_sep global"
    candidates[f"{dlib_key} + {lm_key}"] = tuple(np.concatenate([candidates[dlib_key][i], candidates[lm_key][i]], 1)
                                                 for i in range(2))

    results = {}
    for name, (tr, va) in candidates.items():
        results[name] = probe(tr, y_tr, va, y_va, names)
        r = results[name]
        print(f"{r['accuracy'] * 100:6.2f}%  MCA {r['mean_class_accuracy'] * 100:6.2f}%  ({r['dims']:5d} dims)  {name}",
              flush=True)
    if args.output_json:
        atomic_write_json(args.output_json, {"train_faces": len(x_tr), "valid_faces": len(x_va),
                                             "command": " ".join(sys.argv), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
