"""The FastAPI app behind `grefel serve`: the web page, POST /predict and GET /health.

Every request body is read by `upload.read_file_field` (size and time bounded)
and sized by `headers.image_dimensions` before a pixel is decoded; decoding and
inference run on a small thread pool, one Recognizer per thread (Recognizer and
its cv2 face detector are not thread-safe), so the event loop keeps accepting
and rejecting requests while photos are analysed.
"""

from __future__ import annotations

import asyncio
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from grefel.data.images import decode_image
from grefel.errors import ConfigError, DataError
from grefel.inference.recognizer import ImageResult, Recognizer
from grefel.serve.headers import image_dimensions
from grefel.serve.upload import UploadError, read_file_field

FILE_FIELD = "file"


@dataclass
class ServeConfig:
    checkpoint: str | None = None       # None: the shipped model
    max_upload_mb: float = 10.0         # whole request body, in MiB
    max_pixels: int = 40_000_000        # declared width x height; bounds decode memory (3 bytes a pixel)
    worker_threads: int = 1             # Recognizers, each on its own thread
    body_timeout_s: float = 60.0        # a client slower than this holds a connection for nothing

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_pixels", "worker_threads", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: expected a positive number, got {getattr(self, name)}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class RecognizerPool:
    """`threads` Recognizers lent to `threads` worker threads; a Recognizer is never shared."""

    def __init__(self, checkpoint: str | None, threads: int) -> None:
        recognizers = [Recognizer(checkpoint) for _ in range(threads)]
        self.classes = recognizers[0].classes
        self.model_info = _model_info(recognizers[0])
        # As many Recognizers as threads: a thread always finds one idle, get() never waits.
        self._idle: queue.SimpleQueue[Recognizer] = queue.SimpleQueue()
        for recognizer in recognizers:
            self._idle.put(recognizer)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="grefel-serve")

    def _predict(self, data: bytearray) -> tuple[ImageResult, float]:
        start = time.perf_counter()
        image = decode_image(data, "rgb")                          # (H, W, 3) uint8
        if image is None:
            raise DataError("not a decodable image (corrupt or truncated data)")
        recognizer = self._idle.get()
        try:
            result = recognizer.predict(image)
        finally:
            self._idle.put(recognizer)
        return result, time.perf_counter() - start

    async def predict(self, data: bytearray) -> tuple[ImageResult, float]:
        """Decode and analyse on the pool; (result, seconds spent decoding and analysing)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, data)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _model_info(recognizer: Recognizer) -> dict[str, Any]:
    """What a client may want to know about the model; never the server's file paths."""
    info = recognizer.info
    return {"name": recognizer.checkpoint.stem, "preset": info["preset"],
            "input_size": info["input"]["size"], "color": info["preprocessing"]["color"],
            "temperature": float(info["temperature"]), "weights_sha256": info.get("weights_sha256")}


def _index_html() -> str:
    return (resources.files("grefel.serve") / "static" / "index.html").read_text(encoding="utf-8")


def create_app(config: ServeConfig, pool: RecognizerPool | None = None) -> FastAPI:
    """The app; builds the Recognizer pool now (so a served app is ready) unless one is given."""
    pool = pool or RecognizerPool(config.checkpoint, config.worker_threads)
    page = _index_html()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        pool.close()

    # /docs would load Swagger UI from a CDN; the server stays offline, /openapi.json describes the API.
    app = FastAPI(title="grefel", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": pool.model_info}

    @app.post("/predict", openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [FILE_FIELD],
                   "properties": {FILE_FIELD: {"type": "string", "format": "binary"}}}}}}})
    async def predict(request: Request) -> dict[str, Any]:
        """Faces in the uploaded image, each with box, label, confidence and calibrated probabilities."""
        try:
            data = await read_file_field(request, FILE_FIELD, config.max_bytes, config.body_timeout_s)
            kind, width, height = image_dimensions(data)
            if width * height > config.max_pixels:
                raise DataError(f"{kind} image declares {width}x{height} = {width * height} pixels, over the "
                                f"{config.max_pixels}-pixel limit")
            result, seconds = await pool.predict(data)
        except UploadError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except DataError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"width": result.width, "height": result.height,
                "faces": result.to_dict()["faces"], "classes": pool.classes,
                "model": pool.model_info, "seconds": round(seconds, 4)}

    return app
