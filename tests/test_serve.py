"""`grefel serve`: the REST API on a real uvicorn server (in a thread), its limits, and header sizing."""

from __future__ import annotations

import io
import re
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import PHOTOS_DIR
from grefel.commands.serve import listen, make_server
from grefel.data.headers import image_dimensions
from grefel.errors import DataError
from grefel.labels import CANONICAL_CLASSES
from grefel.serve.app import ServeConfig, create_app
from video_helpers import clip

BODY_TIMEOUT_S = 1.0
BOUNDARY = "grefeltestboundary"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking ~60-byte RGB PNG whose IHDR declares width x height: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def multipart(data: bytes, field: str = "file", copies: int = 1) -> bytes:
    part = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="x"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return part * copies + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return {name: (PHOTOS_DIR / name).read_bytes() for name in ("astronaut.png", "chelsea.png")}


@pytest.fixture(scope="module")
def server() -> str:
    """The shipped model behind the same uvicorn server `grefel serve` runs, on a free port."""
    sock = listen("127.0.0.1", 0)
    uvicorn_server = make_server(create_app(ServeConfig(body_timeout_s=BODY_TIMEOUT_S)))
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert time.monotonic() < deadline, "test server did not start within 30 s"
        time.sleep(0.05)
    yield url
    uvicorn_server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def client(server: str) -> httpx.Client:
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def predict(client: httpx.Client, data: bytes, name: str = "photo.png") -> httpx.Response:
    return client.post("/predict", files={"file": (name, data, "application/octet-stream")})


def test_health_and_page(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"]["name"] == "grefel_ferplus"
    assert health["limits"]["max_upload_mb"] > 0 and health["limits"]["max_pixels"] > 0
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for hook in ('id="file-input"', 'id="result"', 'id="error"', "face-card"):
        assert hook in page.text
    assert "http://" not in page.text and "https://" not in page.text and '="//' not in page.text, \
        "the page must load nothing from elsewhere"


def test_video_upload_follows_the_person_and_draws_a_timeline(client: httpx.Client, tmp_path: Path) -> None:
    video = clip(tmp_path / "walk.mp4", 2.0, 10)
    answer = client.post("/predict/video", files={"file": ("walk.mp4", video, "video/mp4")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["duration_s"] == pytest.approx(2.0) and body["fps_analysed"] == 5.0
    assert [f["time"] for f in body["frames"]] == pytest.approx([i / 5 for i in range(10)], abs=1e-3)
    assert {face["track"] for f in body["frames"] for face in f["faces"]} == {1}
    (track,) = body["summary"]["tracks"]
    assert track["frames"] == 10 and body["timeline_png"].startswith("data:image/png;base64,")
    assert body["summary"]["source"] == "walk.mp4"                 # not the server's temporary file
    raw = client.post("/predict/video", content=video, headers={"content-type": "video/mp4"})
    assert raw.status_code == 200 and raw.json()["summary"]["tracks"][0]["frames"] == 10


def test_video_upload_limits(client: httpx.Client, tmp_path: Path, photos: dict[str, bytes]) -> None:
    long = clip(tmp_path / "long.mp4", 61.0, 1, side=160, face=False)
    answer = client.post("/predict/video", files={"file": ("long.mp4", long, "video/mp4")})
    assert answer.status_code == 413 and answer.json()["detail"] == "this video is 61.0 s long; send at most 60 s"
    answer = client.post("/predict/video", files={"file": ("photo.png", photos["astronaut.png"], "image/png")})
    assert answer.status_code == 400 and "not a readable video" in answer.json()["detail"]
    empty = clip(tmp_path / "empty.mp4", 1.0, 5, side=160, face=False)
    body = client.post("/predict/video", files={"file": ("empty.mp4", empty, "video/mp4")}).json()
    assert body["summary"]["tracks"] == [] and body["timeline_png"] is None


def test_predict_astronaut_one_face(client: httpx.Client, photos: dict[str, bytes]) -> None:
    response = predict(client, photos["astronaut.png"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (512, 512)
    assert body["classes"] == list(CANONICAL_CLASSES)
    assert body["model"]["preset"] and body["seconds"] >= 0
    (face,) = body["faces"]
    assert set(face) == {"box", "score", "label", "confidence", "probabilities", "landmarks"}
    x, y, w, h = face["box"]
    assert 0 <= x < x + w <= 512 and 0 <= y < y + h <= 512 and face["score"] > 0.5
    assert list(face["probabilities"]) == body["classes"]
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert face["label"] == max(face["probabilities"], key=face["probabilities"].get)
    assert face["confidence"] == face["probabilities"][face["label"]]
    assert np.array(face["landmarks"]).shape == (5, 2)


def test_predict_cat_no_face(client: httpx.Client, photos: dict[str, bytes]) -> None:
    response = predict(client, photos["chelsea.png"])
    assert response.status_code == 200, response.text
    assert response.json()["faces"] == [] and response.json()["width"] == 451


def test_raw_image_body_and_formats_of_phones(client: httpx.Client, photos: dict[str, bytes]) -> None:
    """A raw body answers as a multipart upload does; TIFF and HEIC are read like PNG (one list of formats)."""
    import pillow_heif
    from PIL import Image

    form = predict(client, photos["astronaut.png"]).json()
    raw = client.post("/predict", content=photos["astronaut.png"], headers={"content-type": "image/png"}).json()
    assert [f["label"] for f in raw["faces"]] == [f["label"] for f in form["faces"]] and raw["width"] == 512
    image = Image.open(io.BytesIO(photos["astronaut.png"])).convert("RGB")
    for fmt in ("TIFF", "HEIF"):
        buffer = io.BytesIO()
        (pillow_heif.from_pillow(image).save(buffer, quality=90) if fmt == "HEIF" else image.save(buffer, fmt))
        body = predict(client, buffer.getvalue(), f"photo.{fmt.lower()}").json()
        assert len(body["faces"]) == 1 and body["faces"][0]["label"] == form["faces"][0]["label"], fmt


def test_batch_endpoint_answers_per_image(client: httpx.Client, photos: dict[str, bytes]) -> None:
    files = [("file", ("a.png", photos["astronaut.png"])), ("file", ("notes.txt", b"not a photo")),
             ("file", ("c.png", photos["chelsea.png"]))]
    body = client.post("/predict/batch", files=files).json()
    assert [r["file"] for r in body["results"]] == ["a.png", "notes.txt", "c.png"]
    assert len(body["results"][0]["faces"]) == 1 and body["results"][2]["faces"] == []
    assert "not a decodable image" in body["results"][1]["error"] and body["classes"] == list(CANONICAL_CLASSES)
    many = client.post("/predict/batch", files=[("file", ("a.png", b"x"))] * 33)
    assert many.status_code == 413 and "at most 32" in many.json()["detail"]


def test_favicon_and_accepted_formats_on_the_page(client: httpx.Client) -> None:
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    page = client.get("/").text
    accept = re.search(r'accept="([^"]+)"', page).group(1).split(",")
    assert {"image/png", "image/jpeg", "image/tiff", "image/heic", ".heic"} <= set(accept)


def _send_raw(url: str, head: bytes, body: bytes, *, wait_s: float = 0.0, hang_up: bool = False) -> bytes:
    """Send a request over a bare socket (httpx cannot cut a body short); return the raw response.

    `wait_s` keeps the connection open with the body unfinished; `hang_up` then closes our sending side.
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        time.sleep(wait_s)
        if hang_up:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _head(length: int, *extra: str) -> bytes:
    lines = ["POST /predict HTTP/1.1", "Host: test", f"Content-Type: {MULTIPART['content-type']}",
             f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


BAD_REQUESTS = {
    # name: (request kwargs for httpx, expected status, words the message must contain)
    "over 51 MB": (lambda p: {"files": {"file": ("big.png", p["astronaut.png"] + bytes(53_000_000))}},
                   413, "upload limit"),
    "over 51 MB, chunked": (lambda p: {"content": iter([multipart(bytes(53_000_000))]), "headers": MULTIPART},
                            413, "upload limit"),
    "text file": (lambda p: {"files": {"file": ("notes.txt", b"not an image at all\n" * 50)}},
                  400, "not a decodable image"),
    "truncated png": (lambda p: {"files": {"file": ("cut.png", p["astronaut.png"][:40_000])}},
                      400, "not a decodable image"),
    "bomb 60000x60000": (lambda p: {"files": {"file": ("bomb.png", png_declaring(60000, 60000))}},
                         400, "too large to analyse: 60000 x 60000 pixels"),
    "truncated multipart": (lambda p: {"content": multipart(p["astronaut.png"])[:-30], "headers": MULTIPART},
                            400, "truncated multipart"),
    "missing field": (lambda p: {"content": multipart(p["astronaut.png"], field="image"), "headers": MULTIPART},
                      422, "missing form field"),
    "two file fields": (lambda p: {"content": multipart(p["astronaut.png"], copies=2), "headers": MULTIPART},
                        400, "more than one"),
    "neither an image nor multipart": (lambda p: {"content": b"hello", "headers": {"content-type": "text/plain"}},
                                       400, "multipart/form-data"),
    "empty image body": (lambda p: {"content": b"", "headers": {"content-type": "image/png"}}, 422, "empty body"),
    "bomb in a raw body": (lambda p: {"content": png_declaring(30000, 30000), "headers": {"content-type": "image/png"}},
                           400, "too large to analyse"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_then_good(client: httpx.Client, photos: dict[str, bytes], case: str) -> None:
    kwargs, status, words = BAD_REQUESTS[case]
    response = client.post("/predict", **kwargs(photos))
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert predict(client, photos["astronaut.png"]).status_code == 200


def test_slow_body_times_out_then_good(server: str, client: httpx.Client, photos: dict[str, bytes]) -> None:
    body = multipart(photos["astronaut.png"])
    raw = _send_raw(server, _head(len(body), "Connection: close"), body[:1000], wait_s=BODY_TIMEOUT_S + 0.5)
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
    assert predict(client, photos["astronaut.png"]).status_code == 200


def test_body_cut_off_by_hang_up_then_good(server: str, client: httpx.Client, photos: dict[str, bytes]) -> None:
    body = multipart(photos["astronaut.png"])
    raw = _send_raw(server, _head(len(body)), body[:len(body) // 2], hang_up=True)
    assert raw == b"" or raw.startswith(b"HTTP/1.1 400"), raw[:200]
    assert predict(client, photos["astronaut.png"]).status_code == 200


def test_cli_busy_port_is_one_line_error(capsys: pytest.CaptureFixture) -> None:
    from grefel.commands import main

    with listen("127.0.0.1", 0) as taken:
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot listen there" in err


# ---- header sizing, without a server ----------------------------------------------------------

def _encoded(ext: str, width: int, height: int, params: tuple[int, ...] = ()) -> bytes:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext, params, kind", [
    (".png", (), "png"), (".jpg", (), "jpeg"), (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "jpeg"),
    (".bmp", (), "bmp"), (".gif", (), "gif"), (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), "webp"),
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), "webp"),
])
def test_image_dimensions_of_real_encodings(ext: str, params: tuple[int, ...], kind: str) -> None:
    assert image_dimensions(_encoded(ext, 37, 23, params)) == (kind, 37, 23)


def test_image_dimensions_read_from_header_alone() -> None:
    # Signature and IHDR only: no pixel data exists, so sizing cannot have decoded anything.
    assert image_dimensions(png_declaring(60000, 60000)[:33]) == ("png", 60000, 60000)
    vp8x = b"RIFF\0\0\0\0WEBPVP8X" + bytes(8) + (99999).to_bytes(3, "little") + (49999).to_bytes(3, "little")
    assert image_dimensions(vp8x) == ("webp", 100000, 50000)
    gif = b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0) + b"\x2c" + struct.pack("<HHHH", 0, 0, 40000, 30000)
    assert image_dimensions(gif) == ("gif", 40000, 30000)   # a frame larger than its screen


@pytest.mark.parametrize("data", [b"", b"hello", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xda", b"GIF89a",
                                  png_declaring(0, 10), Path(__file__).read_bytes()[:200]])
def test_image_dimensions_refuses_what_it_cannot_size(data: bytes) -> None:
    with pytest.raises(DataError, match="not a decodable image"):
        image_dimensions(data)


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP"]),
       rest=st.binary(max_size=80))
def test_image_dimensions_never_crashes(prefix: bytes, rest: bytes) -> None:
    try:
        kind, width, height = image_dimensions(prefix + rest)
    except DataError:
        return
    assert width >= 1 and height >= 1 and kind in {"png", "jpeg", "gif", "bmp", "webp"}
