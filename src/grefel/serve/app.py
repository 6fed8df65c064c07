"""The FastAPI app behind `grefel serve`: the web page, POST /predict, /predict/batch, /predict/video, GET /health.

Every request body is read by `upload.read_images` (size and time bounded)
and sized by `grefel.data.headers.check_photo` before a pixel is decoded; decoding and
inference run on a small thread pool, one Recognizer per thread (Recognizer and
its cv2 face detector are not thread-safe), so the event loop keeps accepting
and rejecting requests while photos are analysed.
"""

from __future__ import annotations

import asyncio
import base64
import queue
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from grefel.data.headers import MAX_PIXELS, MAX_UPLOAD_MB, MIME_TYPES, SUPPORTED, check_photo
from grefel.data.images import decode_image
from grefel.errors import ConfigError, DataError
from grefel.inference.recognizer import VIDEO_EXTENSIONS, ImageResult, Recognizer, video_info
from grefel.serve.upload import UploadError, read_images

FILE_FIELD = "file"
MAX_BATCH = 32                          # images in one /predict/batch request
# A face in a circle, drawn inline: the page needs nothing from outside this server.
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><circle cx="32" cy="32" r="29" '
           'fill="#2f6fde"/><circle cx="22" cy="26" r="4" fill="#fff"/><circle cx="42" cy="26" r="4" fill="#fff"/>'
           '<path d="M19 40 q13 12 26 0" stroke="#fff" stroke-width="4" fill="none" stroke-linecap="round"/></svg>')


@dataclass
class ServeConfig:
    checkpoint: str | None = None       # None: the shipped model
    max_upload_mb: float = MAX_UPLOAD_MB  # whole request body, in MiB
    max_pixels: int = MAX_PIXELS        # declared width x height; bounds decode memory (3 bytes a pixel)
    worker_threads: int = 1             # Recognizers, each on its own thread
    body_timeout_s: float = 60.0        # a client slower than this holds a connection for nothing
    device: str = "cpu"                 # auto, cpu or cuda (grefel.devices)
    max_video_s: float = 60.0           # longest video /predict/video analyses
    video_fps: float = 5.0              # frames a second it analyses: bounds its work to max_video_s x video_fps

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_pixels", "worker_threads", "body_timeout_s", "max_video_s", "video_fps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: expected a positive number, got {getattr(self, name)}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class RecognizerPool:
    """`threads` Recognizers lent to `threads` worker threads; a Recognizer is never shared."""

    def __init__(self, checkpoint: str | None, threads: int, device: str = "cpu") -> None:
        recognizers = [Recognizer(checkpoint, device=device) for _ in range(threads)]
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
            raise DataError(f"not a decodable image: the file is damaged or cut short (expected {SUPPORTED})")
        recognizer = self._idle.get()
        try:
            result = recognizer.predict(image)
        finally:
            self._idle.put(recognizer)
        return result, time.perf_counter() - start

    async def predict(self, data: bytearray) -> tuple[ImageResult, float]:
        """Decode and analyse on the pool; (result, seconds spent decoding and analysing)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, data)

    def _track(self, data: bytearray, name: str, max_s: float, fps: float) -> dict[str, Any]:
        start = time.perf_counter()
        suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in VIDEO_EXTENSIONS else ".mp4"
        with tempfile.TemporaryDirectory(prefix="grefel-video-") as folder:
            path = Path(folder) / f"upload{suffix}"
            path.write_bytes(data)
            count, rate = video_info(path)
            if count <= 0 or rate <= 0:
                raise DataError("not a readable video: the file is damaged, cut short or in a format this server "
                                "cannot decode")
            if count / rate > max_s:
                raise UploadError(413, f"this video is {count / rate:.1f} s long; send at most {max_s:g} s")
            recognizer = self._idle.get()
            try:
                video = recognizer.track_video(path, fps=fps)
            finally:
                self._idle.put(recognizer)
            video.source = Path(name).name or "video"       # the client's name for it, never the server's path
            timeline = None
            if video.tracks():
                video.timeline(Path(folder) / "timeline.png")
                timeline = "data:image/png;base64," + base64.b64encode((Path(folder) / "timeline.png").read_bytes()
                                                                       ).decode()
        return {"duration_s": round(count / rate, 3), "fps_analysed": fps,
                "frames": [{"frame": f.frame, "time": f.time, "faces": f.to_dict()["faces"]} for f in video.frames],
                "summary": video.summary(), "timeline_png": timeline, "seconds": round(time.perf_counter() - start, 4)}

    async def track(self, data: bytearray, name: str, max_s: float, fps: float) -> dict[str, Any]:
        """Follow the faces of a video on the pool: frames, summary, timeline (a PNG data URL)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._track, data, name, max_s, fps)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _model_info(recognizer: Recognizer) -> dict[str, Any]:
    """What a client may want to know about the model; never the server's file paths."""
    info = recognizer.info
    return {"name": recognizer.checkpoint.stem, "preset": info["preset"],
            "input_size": info["input"]["size"], "color": info["preprocessing"]["color"],
            "temperature": float(info["temperature"]), "weights_sha256": info.get("weights_sha256")}


def _index_html() -> str:
    page = (resources.files("grefel.serve") / "static" / "index.html").read_text(encoding="utf-8")
    return page.replace("{{ACCEPT}}", ",".join(MIME_TYPES) + ",video/*," + ",".join(
        (".heic", ".heif", ".tif", ".tiff", *VIDEO_EXTENSIONS)))  # browsers give HEIC no MIME type of their own


def create_app(config: ServeConfig, pool: RecognizerPool | None = None) -> FastAPI:
    """The app; builds the Recognizer pool now (so a served app is ready) unless one is given."""
    pool = pool or RecognizerPool(config.checkpoint, config.worker_threads, config.device)
    page = _index_html()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        pool.close()

    # /docs would load Swagger UI's scripts from a CDN, and neither FastAPI nor its dependencies carry them, so an
    # offline server cannot show that page; /openapi.json describes the API (README, "Serve").
    app = FastAPI(title="grefel", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": pool.model_info,
                "limits": {"max_upload_mb": config.max_upload_mb, "max_pixels": config.max_pixels,
                           "max_video_s": config.max_video_s, "video_fps": config.video_fps}}

    @app.get("/favicon.ico", include_in_schema=False)
    @app.get("/favicon.svg", include_in_schema=False)
    async def favicon() -> Response:
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    async def analyse(data: bytearray) -> dict[str, Any]:
        check_photo(data, config.max_pixels)
        result, seconds = await pool.predict(data)
        return {"width": result.width, "height": result.height, "faces": result.to_dict()["faces"],
                "seconds": round(seconds, 4)}

    image_body = {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": [FILE_FIELD],
                                           "properties": {FILE_FIELD: {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}}}}

    @app.post("/predict", openapi_extra={"requestBody": image_body})
    async def predict(request: Request) -> dict[str, Any]:
        """Faces in the uploaded image (the raw body, or form field `file`), each with box, label, confidence
        and calibrated probabilities."""
        try:
            (_, data), = await read_images(request, FILE_FIELD, config.max_bytes, config.body_timeout_s)
            answer = await analyse(data)
        except UploadError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except DataError as exc:
            raise HTTPException(400, str(exc)) from None
        return {**answer, "classes": pool.classes, "model": pool.model_info}

    @app.post("/predict/video", openapi_extra={"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": [FILE_FIELD],
                                           "properties": {FILE_FIELD: {"type": "string", "format": "binary"}}}},
        "video/*": {"schema": {"type": "string", "format": "binary"}}}}})
    async def predict_video(request: Request) -> dict[str, Any]:
        """The faces of a short video (the raw body, or form field `file`) followed over time: per analysed
        frame the faces with their track ids, a summary per person, and a timeline PNG as a data URL."""
        try:
            (name, data), = await read_images(request, FILE_FIELD, config.max_bytes, config.body_timeout_s,
                                              media="video")
            answer = await pool.track(data, name, config.max_video_s, config.video_fps)
        except UploadError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except DataError as exc:
            raise HTTPException(400, str(exc)) from None
        return {**answer, "classes": pool.classes, "model": pool.model_info}

    @app.post("/predict/batch", openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [FILE_FIELD], "properties": {
            FILE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}})
    async def predict_batch(request: Request) -> dict[str, Any]:
        """Several images (repeated form field `file`, at most 32) in one request: a result per image, in
        order; an image that cannot be analysed gets an `error` instead of failing the others."""
        try:
            parts = await read_images(request, FILE_FIELD, config.max_bytes, config.body_timeout_s, many=True)
        except UploadError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        if len(parts) > MAX_BATCH:
            raise HTTPException(413, f"{len(parts)} images in one request; send at most {MAX_BATCH}")
        results = []
        for name, data in parts:
            try:
                results.append({"file": name, **await analyse(data)})
            except DataError as exc:
                results.append({"file": name, "error": str(exc)})
        return {"results": results, "classes": pool.classes, "model": pool.model_info}

    return app
