"""One progress helper for every long step: training epochs, evaluation, frozen-map caches, predict.

A tqdm bar when the stream is a terminal; otherwise (logs, CI, pipes) a plain
line every `every` updates (and at the last) or every `period` seconds, so a
log shows progress without a bar's carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def clock(seconds: float) -> str:
    """12 s, 3 min 05 s, 2 h 04 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    def __init__(self, total: int, desc: str, *, unit: str = "it", stream: TextIO | None = None,
                 every: int | None = None, period: float | None = None):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit = total, desc, unit
        self.every, self.period = every, period
        self.count = 0
        self.start = self.last = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, leave=False) \
            if self.stream.isatty() else None

    def update(self, n: int = 1, text: str = "") -> None:
        self.count += n
        if self.bar is not None:
            if text:
                self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        due = (self.every is not None and (self.count % self.every < n or self.count >= self.total)) or \
              (self.period is not None and now - self.last >= self.period)
        if due:
            self.last = now
            rate = self.count / max(now - self.start, 1e-9)
            left = f", {clock((self.total - self.count) / rate)} left" if 0 < self.count < self.total else ""
            print(f"{self.desc}: {self.count}/{self.total} {self.unit} ({rate:.1f}/s{left})"
                  + (f" {text}" if text else ""), file=self.stream, flush=True)

    def write(self, line: str, file: TextIO | None = None) -> None:
        """Print without tearing the bar."""
        if self.bar is not None:
            self.bar.write(line, file=file or self.stream)
        else:
            print(line, file=file or self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
