"""Shared tools of the reliability suite: bounded hypothesis settings, the outcome check, case counts.

Every fuzz test runs a fixed number of derandomized examples (CI sees the same
cases each run); GREFEL_FUZZ_SCALE multiplies the counts for a longer local
hunt. The counts actually run, and the SIGKILLs survived, are printed at the
end of the session so the report can quote them.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings

from grefel.errors import GrefelError

FUZZ_SCALE = float(os.environ.get("GREFEL_FUZZ_SCALE", "1"))
HANG_SECONDS = 20  # one parse of a few kB taking this long is a hang, not slowness

CASES: Counter[str] = Counter()    # generated inputs run, per parser
KILLS: Counter[str] = Counter()    # SIGKILLs survived, per fault-injection test


def fuzz_settings(max_examples: int) -> settings:
    """Explicit, bounded example counts; no deadline (the CPU is shared), hangs are caught by `outcome`.

    No shrinking: it can take minutes on a failure, and each generated case already says
    which mutation it carries.
    """
    return settings(max_examples=max(1, round(max_examples * FUZZ_SCALE)), deadline=None, derandomize=True,
                    database=None, print_blob=True, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Hang(Exception):
    """A generated case ran past HANG_SECONDS."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_one_line(exc: BaseException) -> None:
    message = str(exc)
    assert message.strip(), f"{type(exc).__name__} with an empty message"
    assert len(message.splitlines()) == 1, f"{type(exc).__name__} message is not one line: {message!r}"


def generated(parser: str) -> None:
    """Count one generated input of `parser` (each may be loaded more than once)."""
    CASES[parser] += 1


def outcome(load: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, GrefelError | None]:
    """Run the code under test on one input: (result, None), or (None, error) for a one-line GrefelError.

    Any other exception, or a hang, propagates and fails the example.
    """
    with time_limit(HANG_SECONDS):
        try:
            return load(*args, **kwargs), None
        except GrefelError as exc:
            assert_one_line(exc)
            return None, exc


def training_state_info(epoch: int) -> dict:
    """The JSON half of a training state with every key `train` reads on --resume, realistically shaped."""
    return {"epoch": epoch, "step": 8 * epoch, "best": {"value": 0.5, "epoch": epoch, "metric": "accuracy"},
            "optimizer": {"param_groups": [{"lr": 0.001, "params": [0]}], "state": {}},
            "scheduler": {"last_epoch": 8 * epoch}, "scaler": {},
            "rng": {"numpy": ["MT19937", 0, 0, 0.0], "python": [3, [0] * 625, None]},
            "wandb_run_id": None, "config": {"epochs": 2}}


def random_image(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def pixels_text(image: np.ndarray) -> str:
    return " ".join(map(str, image.ravel().tolist()))


@pytest.fixture(scope="session")
def reliability_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One decoded-data cache for the suite (FERPlus train is decoded once), also for child processes."""
    path = str(tmp_path_factory.mktemp("grefel-reliability-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GREFEL_CACHE_DIR", path)
        yield path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if CASES:
        terminalreporter.write_sep("-", "reliability: generated cases run per parser")
        for name, count in sorted(CASES.items()):
            terminalreporter.write_line(f"{name:32s} {count:6d}")
    if KILLS:
        terminalreporter.write_sep("-", "reliability: SIGKILLs survived")
        for name, count in sorted(KILLS.items()):
            terminalreporter.write_line(f"{name:32s} {count:6d}")
