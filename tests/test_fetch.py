"""`bnlab fetch` against a local HTTP server (a thread on 127.0.0.1) serving a small Imagenette-layout archive made
here: the first response breaks off halfway, the download resumes with an HTTP Range request, the extracted files
are checked, and the command says where the data is; a wrong checksum is one line, exit 2."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bnlab.cli import main
from test_data_imagenette import write_imagenette


class FlakyArchiveServer(ThreadingHTTPServer):
    """Serves `payload`; the first full request is cut after half the bytes (the connection drops)."""

    def __init__(self, payload: bytes):
        super().__init__(("127.0.0.1", 0), FlakyHandler)
        self.payload, self.ranges, self.cut = payload, [], False


class FlakyHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        server, payload = self.server, self.server.payload
        asked = self.headers.get("Range")
        server.ranges.append(asked)
        start = int(asked.removeprefix("bytes=").split("-")[0]) if asked else 0
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        self.send_header("Content-Length", str(len(payload) - start))
        self.end_headers()
        if not server.cut:  # the interruption: half the body, then the connection closes
            server.cut = True
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload[start:])

    def log_message(self, *args):
        pass


def imagenette_archive(tmp_path) -> bytes:
    write_imagenette(tmp_path / "src", n_train=6, n_val=3)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "imagenette2-160", arcname="imagenette2-160")
    return buf.getvalue()


@pytest.fixture
def server(tmp_path):
    srv = FlakyArchiveServer(imagenette_archive(tmp_path))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_fetch_resumes_an_interrupted_download_and_checks_what_it_extracted(server, tmp_path, capsys):
    url = f"http://127.0.0.1:{server.server_address[1]}/imagenette2-160.tgz"
    md5 = hashlib.md5(server.payload).hexdigest()
    root = tmp_path / "data"
    main(["fetch", "imagenette", "--root", str(root), "--url", url, "--md5", md5])
    out = capsys.readouterr().out
    half = len(server.payload) // 2
    assert server.ranges == [None, f"bytes={half}-"]  # cut once, then asked for the rest only
    assert f"resuming imagenette2-160.tgz at {half} bytes" in out
    folder = root / "imagenette2-160"
    assert "18 train / 9 val images" in out and f"in {folder}; runs read it with data.root={root}" in out
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 27 and not (root / "imagenette2-160.tgz").exists()
    # fetched before: the files are checked against SHA256SUMS, nothing downloaded; a changed file is named
    main(["fetch", "imagenette", "--root", str(root), "--url", url])
    assert "27 files match SHA256SUMS" in capsys.readouterr().out and len(server.ranges) == 2
    changed = next((folder / "val").rglob("*.JPEG"))
    changed.write_bytes(changed.read_bytes()[:-10])
    with pytest.raises(SystemExit) as exit_:
        main(["fetch", "imagenette", "--root", str(root), "--url", url])
    assert exit_.value.code == 2 and f"{changed}: missing or changed" in capsys.readouterr().err


def test_a_wrong_archive_checksum_is_one_line_exit_2(server, tmp_path, capsys):
    url = f"http://127.0.0.1:{server.server_address[1]}/imagenette2-160.tgz"
    with pytest.raises(SystemExit) as exit_:
        main(["fetch", "imagenette", "--root", str(tmp_path / "data"), "--url", url, "--md5", "0" * 32])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "is not the published 000" in err[0]
    assert not (tmp_path / "data" / "imagenette2-160").exists()
