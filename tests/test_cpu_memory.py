"""grefel.cpu_memory: with the training allocator, freed blocks of 4 MiB and more leave the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings: Linux only")

# Frees every other one of 40 blocks of 8 MiB, after a 16 MiB block has raised glibc's dynamic mmap
# threshold as a training step's first large free does; reports how much resident memory that released.
PROBE = """
import json, os, sys
from grefel.cpu_memory import use_training_allocator
if sys.argv[1] == "command":        # through `grefel train`, stopped at its config: the wiring
    from grefel.commands import main
    assert main(["train", "--config", "no-such-config.yaml", "--output-dir", "unused"]) == 2
    applied = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
else:
    applied = use_training_allocator() if sys.argv[1] == "on" else False
import torch

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def huge_mib():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) / 1024
    return 0.0

first = torch.ones(4 << 20)                       # 16 MiB
del first
blocks = [torch.ones(2 << 20) for _ in range(40)]    # 8 MiB each, pages touched
huge, before = huge_mib(), rss_mib()
del blocks[::2]
print(json.dumps({"applied": applied, "released_mib": before - rss_mib(), "huge_mib": huge,
                  "late": use_training_allocator()}))
"""


@pytest.fixture(scope="module")
def probes() -> tuple[dict, dict, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_")}
    runs = [subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
            for mode in ("on", "off", "command")]
    return tuple(json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)


def test_training_allocator_returns_freed_blocks_and_glibc_defaults_keep_them(probes):
    on, off, _ = probes
    assert on["applied"] and not off["applied"]
    assert on["released_mib"] > 140, on            # 20 blocks of 8 MiB freed
    assert off["released_mib"] < 40, off           # the same frees leave holes in glibc's heap
    assert not on["late"]                          # torch loaded: too late for the huge-page switch


def test_training_allocator_backs_large_blocks_with_huge_pages(probes):
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[never]" in thp.read_text():
        pytest.skip("transparent huge pages are off on this kernel")
    on, off, _ = probes
    assert on["huge_mib"] >= 80, on                # of the 320 MiB live (240 here; the kernel grants what it can)
    if "[madvise]" in thp.read_text():
        assert off["huge_mib"] < 20, off           # only PyTorch's madvise asks for them


def test_grefel_train_uses_the_training_allocator(probes):
    command = probes[2]
    assert command["applied"] and command["released_mib"] > 140, command
