"""Model speed and memory on this machine's CPU cores.

Forward+backward images/s and peak memory at batch 64 (training mode, AdamW
step included), eval-mode images/s, each with and without channels_last, in
float32 and, with --amp, under bf16 autocast too (fast on CPUs with bf16 units,
such as Intel AMX; slower without). Each measurement runs in its own process so
peak RSS is its own.

    python benchmarks/bench_models.py                       # grefel_small and grefel_paper
    python benchmarks/bench_models.py --preset grefel_small --set branch_size=80
    python benchmarks/bench_models.py --preset cnn_baseline --amp --steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def measure(preset: str, overrides: dict, batch: int, steps: int, channels_last: bool, mode: str,
            bf16: bool = False) -> dict:
    from grefel.models import create_model

    torch.manual_seed(0)
    model = create_model(preset, **overrides)
    cfg = model.config
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.rand(batch, cfg.in_chans, cfg.input_size, cfg.input_size)
    target = torch.nn.functional.one_hot(torch.randint(0, cfg.num_classes, (batch,)), cfg.num_classes).float()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "train":
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                out = model(x, trust=0.5)
            loss = -(target * out.corrected.float().clamp_min(1e-8).log()).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                model(x)
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"preset": preset, "overrides": overrides, "mode": mode, "channels_last": channels_last,
            "precision": "bf16 autocast" if bf16 else "float32",
            "batch": batch, "images_per_s": round(batch * steps / seconds, 1),
            "peak_rss_mb": round(peak / 1024, 1), "rss_increase_mb": round((peak - rss_before) / 1024, 1),
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="default: grefel_small and grefel_paper")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mode", choices=["train", "eval", "both"], default="both")
    parser.add_argument("--amp", action="store_true", help="also measure under bf16 autocast")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(**spec)))
        return
    import yaml

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    modes = ["train", "eval"] if args.mode == "both" else [args.mode]
    for preset in args.preset or ["grefel_small", "grefel_paper"]:
        for mode in modes:
            for channels_last in (False, True):
                for bf16 in (False, True) if args.amp else (False,):
                    spec = dict(preset=preset, overrides=overrides, batch=args.batch, steps=args.steps,
                                channels_last=channels_last, mode=mode, bf16=bf16)
                    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                         capture_output=True, text=True, check=True)
                    print(out.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
