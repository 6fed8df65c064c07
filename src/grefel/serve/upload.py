"""Read the uploaded images of a request, bounded in size and time, without spooling.

A request sends its image either as the raw body (`Content-Type: image/...`) or
as multipart form fields named `file` (several for the batch endpoint).
FastAPI's `UploadFile` parses the whole body (to a temp file) before the
endpoint runs and accepts a body cut off before its closing boundary. Here the
body is counted as it streams, refused at the first byte over the limit, and
only the wanted parts are kept in memory (never more than the limit). Messages
are worded for the person who chose the file: the web page shows them as they are.
"""

from __future__ import annotations

import asyncio

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request


class UploadError(Exception):
    """A request whose body cannot be accepted; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


class _FieldCollector:
    """python-multipart callbacks that keep the data (and file names) of the parts named `field`."""

    def __init__(self, field: str, many: bool) -> None:
        self.field = field.encode()
        self.many = many
        self.parts: list[tuple[str, bytearray]] = []
        self.complete = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._capturing = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_part, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers, self._capturing = {}, False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_part(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if options.get(b"name") != self.field:
            return
        if self.parts and not self.many:
            raise UploadError(400, f"more than one {self.field.decode()!r} field; send one image "
                                   f"(or several to /predict/batch)")
        self.parts.append((options.get(b"filename", b"").decode(errors="replace"), bytearray()))
        self._capturing = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._capturing:
            self.parts[-1][1].extend(data[start:end])

    def _end(self) -> None:
        self.complete = True


async def _stream(request: Request, max_bytes: int, timeout_s: float, sink) -> None:
    """Feed the body to `sink` as it arrives, refusing it at the first byte over the limit or the deadline."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise UploadError(400, f"Content-Length {declared[:20]!r} is not a byte count")
        if int(declared) > max_bytes:
            raise UploadError(413, f"this upload is {_mb(int(declared))}, over the {_mb(max_bytes)} upload limit")

    async def consume() -> None:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)  # counted as it arrives: chunked bodies declare no length
            if received > max_bytes:
                raise UploadError(413, f"this upload is over the {_mb(max_bytes)} upload limit")
            sink(chunk)

    try:
        await asyncio.wait_for(consume(), timeout_s)
    except asyncio.TimeoutError:
        raise UploadError(408, f"the upload did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise UploadError(400, "client disconnected before the body was complete") from None


async def read_images(request: Request, field: str, max_bytes: int, timeout_s: float, *, many: bool = False,
                      media: str = "image") -> list[tuple[str, bytearray]]:
    """(file name, bytes) of each uploaded image (or video, `media="video"`): the raw body for
    `Content-Type: image/*` (`video/*`) or application/octet-stream, else every multipart field `field`
    (one unless `many`). UploadError (413, 408, 400 or 422) when the body is not acceptable."""
    kind, params = parse_options_header(request.headers.get("content-type"))
    if kind.startswith(f"{media}/".encode()) or kind == b"application/octet-stream":
        body = bytearray()
        await _stream(request, max_bytes, timeout_s, body.extend)
        if not body:
            raise UploadError(422, f"empty body: send the {media}'s bytes")
        return [("", body)]
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError(400, f"expected an {media} body (Content-Type {media}/...) or a multipart/form-data "
                               f"body with a {field!r} field")
    collector = _FieldCollector(field, many)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
    except ValueError as exc:  # FormParserError (a ValueError): boundary too long
        raise UploadError(400, f"malformed multipart body ({exc})") from None
    try:
        await _stream(request, max_bytes, timeout_s, parser.write)
    except MultipartParseError as exc:
        raise UploadError(400, f"malformed multipart body ({exc})") from None
    if not collector.complete:
        raise UploadError(400, "truncated multipart body (no closing boundary)")
    if not collector.parts:
        raise UploadError(422, f"missing form field {field!r} (the {media} to analyse)")
    return collector.parts
