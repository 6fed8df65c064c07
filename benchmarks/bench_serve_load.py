"""Load test of `grefel serve` from a second process on 127.0.0.1; prints JSON, exits 1 on any wrong answer.

Starts `grefel serve --port 0` itself, then sends --requests requests at
--concurrency: real photos (astronaut.png, chelsea.png, FERPlus crops upscaled
to 192 px as PNG and JPEG) with a share of bad requests interleaved (a body 1 MB
over the upload limit the server reports on /health, text, a PNG declaring
60000x60000, a multipart body cut before its closing boundary) and a few slow
clients that trickle a good photo over about 2 s.
Good requests must get 200, bad ones their 4xx. Reports latency percentiles,
requests/s, wrong answers, the server's RSS at start, middle and end (and its
peak) and after each tenth of the requests (a leak grows steadily, allocator
growth levels off), and the load average, since other jobs on the machine skew
every figure.

    python benchmarks/bench_serve_load.py                                # 2000 requests, concurrency 16
    python benchmarks/bench_serve_load.py --requests 400 --server-threads 2
    python benchmarks/bench_serve_load.py --requests 20000      # long enough to tell a leak from allocator growth
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BOUNDARY = "benchboundary"
MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
# Kind of request -> the status it must get.
EXPECTED = {"good": 200, "slow": 200, "oversized": 413, "not_image": 400, "bomb": 400, "truncated_multipart": 400}
BAD_KINDS = ("oversized", "not_image", "bomb", "truncated_multipart")


def multipart(data: bytes) -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'.encode()
            + data + f"\r\n--{BOUNDARY}--\r\n".encode())


def bomb_png(side: int = 60000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def good_photos(ferplus_crops: int) -> list[bytes]:
    photos = [(SHARED / "photos" / name).read_bytes() for name in ("astronaut.png", "chelsea.png")]
    valid = sorted((SHARED / "datasets" / "ferplus" / "FER2013Valid").glob("*.png"))[:ferplus_crops]
    for path in valid:
        crop = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (192, 192), interpolation=cv2.INTER_CUBIC)
        photos += [cv2.imencode(ext, crop)[1].tobytes() for ext in (".png", ".jpg")]
    return photos


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far: what a request costs, whatever else shares the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "grefel", "serve", "--port", "0",
                                 "--threads", str(threads)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (match := re.search(r"(http://127\.0\.0\.1:\d+)/", log.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("grefel serve did not start:\n" + log.read_text())
        time.sleep(0.1)
    return proc, match.group(1)


def schedule(n: int, bad_share: float, slow: int, goods: int, seed: int) -> list[tuple[str, int]]:
    """(kind, photo index) per request, shuffled so bad and slow ones land among the good."""
    rng = random.Random(seed)
    n_bad = round(n * bad_share)
    kinds = [BAD_KINDS[i % len(BAD_KINDS)] for i in range(n_bad)] + ["slow"] * slow
    kinds += ["good"] * (n - len(kinds))
    rng.shuffle(kinds)
    return [(kind, rng.randrange(goods)) for kind in kinds]


async def send(client: httpx.AsyncClient, kind: str, photo: bytes, payloads: dict[str, bytes]) -> int:
    if kind == "good":
        response = await client.post("/predict", files={"file": ("photo", photo)})
    elif kind == "slow":
        body = multipart(photo)

        async def trickle():                  # ~2 s for the whole body, in 10 pieces
            step = len(body) // 10 + 1
            for start in range(0, len(body), step):
                await asyncio.sleep(0.2)
                yield body[start:start + step]
        response = await client.post("/predict", content=trickle(), headers={"content-type": MULTIPART_TYPE})
    elif kind == "truncated_multipart":
        response = await client.post("/predict", content=multipart(photo)[:-30],
                                     headers={"content-type": MULTIPART_TYPE})
    else:
        response = await client.post("/predict", files={"file": ("upload", payloads[kind])})
    return response.status_code


async def load(url: str, pid: int, plan: list[tuple[str, int]], photos: list[bytes], concurrency: int,
               max_upload_mb: float) -> dict:
    payloads = {"oversized": photos[0] + bytes(int(max_upload_mb * 1024 * 1024) + 1_000_000),   # the limit is MiB
                "not_image": b"plain text, not a photo\n" * 40, "bomb": bomb_png()}
    records: list[tuple[str, int | str, float]] = []
    rss = {"start": rss_mb(pid)}
    peak = rss["start"]
    trace: list[float] = []                       # RSS after each tenth of the requests
    queue = iter(enumerate(plan))

    async def worker(client: httpx.AsyncClient) -> None:
        for index, (kind, photo) in queue:
            start = time.perf_counter()
            try:
                status: int | str = await send(client, kind, photos[photo], payloads)
            except httpx.HTTPError as exc:
                status = f"{type(exc).__name__}: {exc}"
            records.append((kind, status, time.perf_counter() - start))
            if index == len(plan) // 2:
                rss["middle"] = rss_mb(pid)
            if (index + 1) % max(len(plan) // 10, 1) == 0:   # a leak grows steadily; allocator growth levels off
                trace.append(round(rss_mb(pid), 1))

    async def sample_peak() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.25)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        sampler = asyncio.create_task(sample_peak())
        start, cpu_start = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu_start
        sampler.cancel()
    rss["end"] = rss_mb(pid)
    return {**summarise(records, seconds, rss, peak), "server_rss_mb_by_tenth": trace, "server_cpu_s": round(cpu, 1),
            "server_cpu_ms_per_request": round(1000 * cpu / len(records), 1)}


def summarise(records: list[tuple[str, int | str, float]], seconds: float, rss: dict, peak: float) -> dict:
    def ms(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)) * 1000, 1) if values else None

    by_kind: dict[str, dict] = {}
    for kind in EXPECTED:
        mine = [(status, t) for k, status, t in records if k == kind]
        statuses: dict[str, int] = {}
        for status, _ in mine:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        times = [t for _, t in mine]
        by_kind[kind] = {"count": len(mine), "expected": EXPECTED[kind], "statuses": statuses,
                         "p50_ms": ms(times, 50), "p99_ms": ms(times, 99)}
    wrong = [(k, s) for k, s, _ in records if s != EXPECTED[k]]
    good = [t for k, s, t in records if k == "good" and s == 200]
    return {"requests": len(records), "seconds": round(seconds, 1),
            "requests_per_s": round(len(records) / seconds, 2),
            "good_p50_ms": ms(good, 50), "good_p99_ms": ms(good, 99),
            "wrong_answers": len(wrong), "wrong_examples": [f"{k}: {s}" for k, s in wrong[:5]],
            "by_kind": by_kind, "server_rss_mb": {k: round(v, 1) for k, v in rss.items()},
            "server_peak_rss_mb": round(peak, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--server-threads", type=int, default=1, help="grefel serve --threads")
    parser.add_argument("--bad-share", type=float, default=0.15, help="share of bad requests (default 0.15)")
    parser.add_argument("--slow-clients", type=int, default=8, help="good requests whose body trickles in over ~2 s")
    parser.add_argument("--ferplus-crops", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    photos = good_photos(args.ferplus_crops)
    plan = schedule(args.requests, args.bad_share, args.slow_clients, len(photos), args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args.server_threads, Path(tmp) / "serve.log")
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                deadline = time.monotonic() + 120               # model loading
                while True:
                    try:
                        health = client.get("/health")
                        health.raise_for_status()
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                for photo in photos:                             # warm-up, not timed
                    client.post("/predict", files={"file": ("photo", photo)}).raise_for_status()
            load_before = os.getloadavg()
            max_upload_mb = health.json()["limits"]["max_upload_mb"]
            result = asyncio.run(load(url, proc.pid, plan, photos, args.concurrency, max_upload_mb))
            load_after = os.getloadavg()
        finally:
            proc.terminate()
            proc.wait(30)
    result = {"concurrency": args.concurrency, "server_threads": args.server_threads, "max_upload_mb": max_upload_mb,
              "cpu_count": os.cpu_count(), "loadavg_1_5_15_before": load_before,
              "loadavg_1_5_15_after": load_after, "photos": len(photos), **result}
    print(json.dumps(result, indent=2))
    return 1 if result["wrong_answers"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
