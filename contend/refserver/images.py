"""The images the tasks name, served as Antenna's object storage (S3, MinIO) serves them.

Antenna's tasks carry ``image_url`` = the source image's ``public_base_url`` + its path, a URL of
the storage, not of the API. Here that storage is its own process and port: ``POOL`` JPEGs are drawn
once when it starts (deterministic: the same bytes on every start and machine with the same Pillow),
and every key ending in ``.jpg`` is answered with one of them, chosen by the key's MD5, with the
headers S3 gives: Content-Type, Content-Length, ETag (the MD5 of the body, quoted), Last-Modified,
Accept-Ranges; a matching If-None-Match gets 304, any other key 404 with S3's NoSuchKey body. No
Django: the process never touches Postgres or NATS.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

PREFIX = "/images/"
POOL = 8
WIDTH, HEIGHT = 1920, 1080
"""A trap camera's frame at a quarter of its pixels: about 420 KB each at quality 85."""
QUALITY = 85


@dataclass(frozen=True)
class Picture:
    body: bytes
    etag: str


def draw(seed: int, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    """Return the JPEG bytes of picture ``seed``: an unevenly lit sheet with moth-sized blots and noise."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed)
    coarse = Image.frombytes("L", (width // 8, height // 8), rng.randbytes((width // 8) * (height // 8)))
    shade = coarse.resize((width, height), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(3))
    sheet = Image.composite(Image.new("RGB", (width, height), (228, 226, 214)),
                            Image.new("RGB", (width, height), (200, 196, 180)), shade)
    pen = ImageDraw.Draw(sheet)
    for _ in range(rng.randint(15, 40)):
        x, y = rng.randrange(width), rng.randrange(height)
        a, b = rng.randint(15, 70), rng.randint(10, 45)
        colour = (rng.randint(40, 150), rng.randint(40, 150), rng.randint(40, 150))
        pen.ellipse((x - a, y - b, x + a, y + b), fill=colour)
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    picture = Image.blend(sheet, Image.merge("RGB", (grain, grain, grain)), 0.08)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()


def pool(size: int = POOL, width: int = WIDTH, height: int = HEIGHT) -> list[Picture]:
    """Return the ``size`` pictures a server answers with."""
    pictures = []
    for seed in range(size):
        body = draw(seed, width, height)
        pictures.append(Picture(body, f'"{hashlib.md5(body).hexdigest()}"'))
    return pictures


def picture_for(key: str, pictures: list[Picture]) -> Picture:
    """Return the picture of an object key (the same key, the same picture)."""
    digest = hashlib.md5(key.encode()).digest()  # CRC-32's low bits repeat over consecutive names
    return pictures[int.from_bytes(digest[:4], "big") % len(pictures)]


NO_SUCH_KEY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
               b"<Message>The specified key does not exist.</Message></Error>")


class ImageServer(ThreadingHTTPServer):
    """A thread per connection, keep-alive, as the object storage a worker's 8 download threads reach."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], pictures: list[Picture], modified: float) -> None:
        super().__init__(address, _Handler)
        self.pictures = pictures
        self.last_modified = formatdate(modified, usegmt=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ImageServer

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if not (path.startswith(PREFIX) and path.endswith(".jpg")):
            self._send(404, "application/xml", NO_SUCH_KEY, body)
            return
        picture = picture_for(path.removeprefix(PREFIX), self.server.pictures)
        headers = {"ETag": picture.etag, "Last-Modified": self.server.last_modified, "Accept-Ranges": "bytes"}
        if self.headers.get("If-None-Match") == picture.etag:
            self._send(304, None, b"", False, headers)
            return
        self._send(200, "image/jpeg", picture.body, body, headers)

    def _send(self, status: int, content_type: str | None, data: bytes, body: bool,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if status != 304:
            self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per image would fill the log; errors reach the caller as statuses."""
