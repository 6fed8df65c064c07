"""Where the training memory goes: a grefel preset (or POSTER++) at one batch, 224 px; prints JSON.

One training step (forward, backward, optimizer step; SAM around AdamW by default, as in
`configs/ferplus_paper.yaml` and POSTER++) on random input, broken down into:
- parameters, gradients and optimizer state (bytes of the tensors);
- tensors saved for backward, per block of the model (unique storages, parameters excluded), with the
  attention matrices among them (square (..., N, N) tensors saved inside attention layers);
- the frozen landmark maps handed to the fusion (grefel);
- the PyTorch memory profiler's timeline (`torch.profiler`, `profile_memory=True`): the peak of the
  tensors alive, by category (parameter, gradient, optimizer state, activation, temporary, ...);
- the process's peak RSS (what the tensors above become once the allocator has had its say).

    python benchmarks/profile_memory.py                                  # grefel_paper, batch 32
    python benchmarks/profile_memory.py --set checkpoint_ir_stage1=true --set checkpoint_fusion=true
    python benchmarks/profile_memory.py --poster-src ../POSTER_V2        # the POSTER++ reference
"""

from __future__ import annotations

import argparse
import json
import resource
from collections import defaultdict

import torch
import torch.nn.functional as F
from bench_poster import INPUT_SIZE, NUM_CLASSES, build_poster
from torch import nn

MIB = 2 ** 20
BACKBONES = ("image_backbone", "ir_back", "blocks", "cross_blocks")  # reported one child deeper


def block_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in BACKBONES and len(parts) > 1 else parts[0]


class SavedTensors:
    """Bytes saved for backward during a forward, attributed to the block running when first saved;
    square (..., N, N) float tensors saved inside an attention layer are counted as attention matrices."""

    def __init__(self, model: nn.Module):
        self.stack: list[tuple[str, bool]] = [("(outside modules: loss, functional ops)", False)]  # (block, inside an attention layer)
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = defaultdict(int)
        self.attention: dict[str, int] = defaultdict(int)
        self.handles = []
        for name, module in model.named_modules():
            if name:
                is_attention = "Attention" in type(module).__name__
                self.handles.append(module.register_forward_pre_hook(
                    lambda m, a, n=block_of(name), att=is_attention: self.stack.append((n, att or self.stack[-1][1]))))
                self.handles.append(module.register_forward_hook(self._leave))

    def _leave(self, module: nn.Module, args, output) -> None:
        self.stack.pop()  # returns None: a forward hook's return value would replace the output

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            block, in_attention = self.stack[-1]
            self.bytes[block] += storage.nbytes()
            if in_attention and t.ndim >= 3 and t.shape[-1] == t.shape[-2] and t.dtype.is_floating_point:
                self.attention[block] += storage.nbytes()
        return t

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="grefel_paper")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="grefel model config override")
    parser.add_argument("--poster-src", help="profile POSTER++ from this checkout instead")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--optimizer", choices=["sam", "adamw"], default="sam")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-timeline", action="store_true", help="skip the torch.profiler memory timeline")
    args = parser.parse_args()
    import yaml

    from grefel.engine.losses import GReFELLoss
    from grefel.engine.optim import SAM
    from grefel.models import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    is_poster = args.poster_src is not None
    model = build_poster(args.poster_src) if is_poster else create_model(args.preset, **overrides)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    x = torch.rand(args.batch, 3, INPUT_SIZE, INPUT_SIZE)
    label = torch.randint(0, NUM_CLASSES, (args.batch,))
    criterion = GReFELLoss()
    opt = (SAM(trainable, torch.optim.AdamW, rho=0.05, lr=3.5e-5) if args.optimizer == "sam"
           else torch.optim.AdamW(trainable, lr=3.5e-5))

    def loss_of() -> torch.Tensor:
        if is_poster:
            return F.cross_entropy(model(x), label)
        out = model(x, trust=0.5)
        return criterion(out, F.one_hot(label, NUM_CLASSES).float(), model.reliability.anchors, 0.5)[0]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_of().backward()
        if args.optimizer == "sam":
            opt.first_step()
            opt.zero_grad(set_to_none=True)
            loss_of().backward()
            opt.second_step()
        else:
            opt.step()

    # Saved for backward, per block (one forward, then its backward frees them).
    saved = SavedTensors(model)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        loss = loss_of()
    saved.remove()
    loss.backward()
    del loss
    landmark_maps = 0
    if not is_poster and getattr(model, "landmarks", None) is not None:
        with torch.no_grad():
            landmark_maps = tensor_bytes(model.frozen_maps(x))
    step()  # optimizer state now exists
    states = [opt.state] + ([opt.base_optimizer.state] if isinstance(opt, SAM) else [])  # SAM keeps AdamW's apart
    optimizer_state = tensor_bytes(v for state in states for s in state.values() for v in s.values() if torch.is_tensor(v))
    report = {
        "model": "poster++" if is_poster else args.preset, "overrides": overrides, "batch": args.batch,
        "optimizer": args.optimizer, "threads": torch.get_num_threads(),
        "parameters_mib": round(tensor_bytes(model.parameters()) / MIB, 1),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "gradients_mib": round(tensor_bytes(p.grad for p in trainable if p.grad is not None) / MIB, 1),
        "optimizer_state_mib": round(optimizer_state / MIB, 1),
        "saved_for_backward_mib": round(sum(saved.bytes.values()) / MIB, 1),
        "saved_by_block_mib": {k: round(v / MIB, 1) for k, v in sorted(saved.bytes.items(), key=lambda kv: -kv[1])},
        "attention_matrices_mib": {k: round(v / MIB, 1) for k, v in saved.attention.items()},
        "landmark_maps_mib": round(landmark_maps / MIB, 1),
    }
    if not args.no_timeline:
        report["profiler_peak_mib"] = timeline_peak(step)
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report, indent=1))


def timeline_peak(step) -> dict:
    """The torch.profiler memory timeline of one step: the categories alive at its peak."""
    import tempfile
    from pathlib import Path

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        times, sizes = json.loads(path.read_text())
    from torch.profiler._memory_profiler import _CATEGORY_TO_COLORS  # category order of the timeline columns

    names = ["unknown" if c is None else c.name.lower() for c in _CATEGORY_TO_COLORS]
    totals = [sum(row) for row in sizes]
    peak = max(range(len(totals)), key=totals.__getitem__)
    return {"total": round(totals[peak] / MIB, 1),
            **{n: round(v / MIB, 1) for n, v in zip(names, sizes[peak]) if v}}


if __name__ == "__main__":
    main()
