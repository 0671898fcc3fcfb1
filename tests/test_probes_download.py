"""``coco-val2017`` download path against a local HTTP server on 127.0.0.1 (never the internet):
first download, resume of a partial file, resume after a dropped connection, a server that ignores
Range, and a checksum mismatch."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from alignkit.errors import AlignkitError
from alignkit.probes import RemoteFile, load_probe

pytestmark = pytest.mark.network


def _jpeg_bytes(color, seed: int) -> bytes:
    rng = __import__("numpy").random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, size=(64, 80, 3), dtype="uint8"))
    img.paste(color, (10, 10, 40, 40))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    images = _zip(
        {
            "val2017/000000000139.jpg": _jpeg_bytes((255, 0, 0), 1),
            "val2017/000000000285.jpg": _jpeg_bytes((0, 0, 255), 2),
        }
    )
    captions = {
        "images": [
            {"id": 139, "file_name": "000000000139.jpg"},
            {"id": 285, "file_name": "000000000285.jpg"},
        ],
        "annotations": [
            {"id": 2, "image_id": 139, "caption": "A room with a red square."},
            {"id": 1, "image_id": 139, "caption": "A red patch on noise."},
            {"id": 3, "image_id": 285, "caption": "A big blue square."},
        ],
    }
    annotations = _zip(
        {
            "annotations/captions_val2017.json": json.dumps(captions).encode(),
            "annotations/instances_val2017.json": b"{}",
        }
    )
    return {"/zips/val2017.zip": images, "/annotations/annotations_trainval2017.zip": annotations}


class _Server:
    """Serves ``files`` with HTTP Range support; ``drop_after[path] = k`` closes the connection
    after k body bytes on the next request for ``path``; ``ignore_range`` answers 200 always."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: dict[str, int] = {}
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                data = server.files.get(self.path)
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.split("=", 1)[1].split("-", 1)[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.drop_after.pop(self.path, None)
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def remote(self, path: str, checksum: str | None = None) -> RemoteFile:
        data = self.files[path]
        return RemoteFile(
            self.url + path,
            size=len(data),
            checksum=checksum or "sha256:" + hashlib.sha256(data).hexdigest(),
        )

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(archives):
    srv = _Server(archives)
    yield srv
    srv.close()


def _load(server: _Server, data_dir: Path, **kw):
    kw.setdefault("images_zip", server.remote("/zips/val2017.zip"))
    kw.setdefault("annotations_zip", server.remote("/annotations/annotations_trainval2017.zip"))
    return load_probe("coco-val2017", data_dir=data_dir, progress=False, **kw)


def test_first_download_then_offline(server: _Server, tmp_path: Path) -> None:
    probe = _load(server, tmp_path)
    assert probe.ids == ("139", "285")
    assert probe.rows[0].captions == ("A red patch on noise.", "A room with a red square.")
    assert probe.rows[1].load_image().getpixel((20, 20)) == pytest.approx((0, 0, 255), abs=30)
    folder = tmp_path / "coco-val2017"
    assert sorted(p.name for p in (folder / "val2017").iterdir()) == [
        "000000000139.jpg",
        "000000000285.jpg",
    ]
    assert not any((folder / "downloads").iterdir())  # archives removed after extraction
    assert not (folder / "annotations" / "instances_val2017.json").exists()  # only captions kept
    n_requests = len(server.requests)
    again = _load(server, tmp_path)
    assert len(server.requests) == n_requests and again.fingerprint == probe.fingerprint


def test_resume_of_a_partial_file(server: _Server, tmp_path: Path, archives) -> None:
    data = archives["/zips/val2017.zip"]
    half = len(data) // 2
    part = tmp_path / "coco-val2017" / "downloads" / "val2017.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:half])
    assert len(_load(server, tmp_path)) == 2
    assert ("/zips/val2017.zip", f"bytes={half}-") in server.requests
    assert ("/zips/val2017.zip", None) not in server.requests  # never fetched from the start


def test_resume_after_a_dropped_connection(server: _Server, tmp_path: Path) -> None:
    server.drop_after["/zips/val2017.zip"] = 1000
    assert len(_load(server, tmp_path)) == 2
    image_requests = [r for r in server.requests if r[0] == "/zips/val2017.zip"]
    assert image_requests == [("/zips/val2017.zip", None), ("/zips/val2017.zip", "bytes=1000-")]


def test_server_that_ignores_range_restarts_cleanly(
    server: _Server, tmp_path: Path, archives
) -> None:
    server.ignore_range = True
    part = tmp_path / "coco-val2017" / "downloads" / "val2017.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from another file")
    assert len(_load(server, tmp_path)) == 2  # checksum verified, so the restart was clean


def test_checksum_mismatch(server: _Server, tmp_path: Path) -> None:
    bad = server.remote("/zips/val2017.zip", checksum="sha256:" + "0" * 64)
    with pytest.raises(AlignkitError) as info:
        _load(server, tmp_path, images_zip=bad)
    msg = str(info.value)
    assert (
        "\n" not in msg and "checksum mismatch" in msg and "val2017.zip" in msg and "0" * 64 in msg
    )
    folder = tmp_path / "coco-val2017"
    assert not (folder / "downloads" / "val2017.zip.part").exists()
    assert not (folder / "downloads" / "val2017.zip").exists()
    assert not (folder / "val2017").exists()
    # a good checksum afterwards downloads afresh and works
    assert len(_load(server, tmp_path)) == 2


def test_not_downloaded_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(AlignkitError) as info:
        load_probe("coco-val2017", data_dir=tmp_path, download_missing=False)
    msg = str(info.value)
    assert (
        "\n" not in msg and str(tmp_path / "coco-val2017") in msg and "download_missing=True" in msg
    )
