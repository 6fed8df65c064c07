"""`grefel serve`: the web page and REST API (grefel.serve.app) on uvicorn.

The `serve` extra (FastAPI, uvicorn) is imported only when the command runs, so
`grefel --help` neither pays for nor needs it.
"""

from __future__ import annotations

import argparse
import os
import socket
from typing import TYPE_CHECKING

from grefel.commands.options import add_device_argument
from grefel.data.headers import MAX_PIXELS, MAX_UPLOAD_MB
from grefel.errors import ConfigError

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a web page and REST API for expression recognition",
        description="Serve GET / (a page to upload a photo and see each face's expression), "
                    "POST /predict (multipart field `file`: an image; JSON per face) and GET /health. "
                    "Binds to 127.0.0.1 unless --host says otherwise.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--checkpoint", help="X.safetensors (with X.json); default: the shipped model")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                        help="largest request body in MiB; larger gets 413 (default 50: a 48 MP phone photo "
                             "is 10-25 MB)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="largest width x height an image header may declare (a decompression-bomb "
                             "limit); larger gets 400 before decoding (default 120000000)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="inference threads, each with its own model copy; the cores are split between them "
                             "(default 1: on 2 cores, 2 or 4 threads measured no more requests per CPU second "
                             "and each adds about 55 MB)")
    add_device_argument(parser)
    parser.add_argument("--max-video-s", type=float, default=60.0, metavar="SECONDS",
                        help="longest video POST /predict/video and the page analyse (default 60)")
    parser.add_argument("--video-fps", type=float, default=5.0, metavar="F",
                        help="frames a second analysed in an uploaded video (default 5)")
    parser.add_argument("--body-timeout", type=float, default=60.0,
                        help="seconds a client may take to send its body; slower gets 408 (default 60)")
    parser.add_argument("--limit-concurrency", type=int, default=32,
                        help="connections served at once; more get 503, which bounds memory (default 32)")
    parser.set_defaults(func=run)


def listen(host: str, port: int) -> socket.socket:
    """Bind now, so a busy port is a one-line error rather than a server log and exit 1."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    return sock


def run(args: argparse.Namespace) -> int:
    try:
        from grefel.serve.app import ServeConfig, create_app
    except ImportError as exc:
        raise ConfigError(f"grefel serve needs the serve extra ({exc.name} is missing): "
                          "pip install 'grefel[serve]'") from None
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected 0-65535")
    if args.limit_concurrency < 1:
        raise ConfigError(f"--limit-concurrency {args.limit_concurrency}: expected at least 1")
    config = ServeConfig(checkpoint=args.checkpoint, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                         worker_threads=args.threads, body_timeout_s=args.body_timeout,
                         device=args.device, max_video_s=args.max_video_s, video_fps=args.video_fps)
    sock = listen(args.host, args.port)  # before the model loads: a busy port fails at once
    _share_cores(config.worker_threads)
    server = make_server(create_app(config), args.limit_concurrency)
    host, port = sock.getsockname()[:2]
    print(f"grefel serve: http://{f'[{host}]' if ':' in host else host}:{port}/ (Ctrl+C stops)", flush=True)
    server.run(sockets=[sock])
    return 0


def make_server(app: "FastAPI", limit_concurrency: int = 32) -> "uvicorn.Server":
    """The uvicorn server `grefel serve` runs (tests run the same one); start it with `.run(sockets=[...])`."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, limit_concurrency=limit_concurrency, timeout_keep_alive=5,
                                         server_header=False, log_level="info"))


def _share_cores(threads: int) -> None:
    """Split the cores between the inference threads so torch and cv2 do not oversubscribe them."""
    import cv2
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_thread = max(1, cores // threads)
    torch.set_num_threads(per_thread)
    cv2.setNumThreads(per_thread)
