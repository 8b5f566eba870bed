"""GLD v1 downloader against a local HTTP server (127.0.0.1 only; it stops itself)."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from common.errors import ConfigError, DataError, PipelineError
from data_prep import download as dl

SLOW_SECONDS = 2.5  # the slow URL answers after this long; the tests allow TIMEOUT per file
TIMEOUT = 1.0
SERVER_LIFETIME = 120.0  # safety stop, whatever happens to the test


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (seed * 37 % 256, seed * 91 % 256, 120)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _send(self, code: int, body: bytes, ctype: str = "image/jpeg", length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        srv = self.server
        path = self.path
        with srv.lock:
            srv.hits[path] += 1
            n = srv.hits[path]
            srv.active += 1
            srv.max_active = max(srv.max_active, srv.active)
        try:
            time.sleep(0.02)  # let concurrent requests overlap, so max_active means something
            if path.startswith("/img/"):
                self._send(200, _jpeg(int(path.split("/")[-1].split(".")[0])))
            elif path == "/missing":
                self._send(404, b"not found", "text/plain")
            elif path == "/slow":
                time.sleep(SLOW_SECONDS)
                self._send(200, _jpeg(1))
            elif path == "/trickle":  # each read is quick, the whole transfer is not
                body = _jpeg(4)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(0, len(body), 20):
                    self.wfile.write(body[i: i + 20])
                    self.wfile.flush()
                    time.sleep(0.1)
            elif path == "/truncated":
                body = _jpeg(2)
                self._send(200, body[: len(body) // 2], length=len(body))
                self.close_connection = True
            elif path == "/text":
                self._send(200, b"<html><body>moved</body></html>", "text/html")
            elif path == "/flaky" and n == 1:  # 503 once, then the image
                self._send(503, b"busy", "text/plain")
            elif path == "/flaky":
                self._send(200, _jpeg(3))
            elif path == "/down":
                self._send(503, b"busy", "text/plain")
            else:
                self._send(404, b"?", "text/plain")
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
            pass
        finally:
            with srv.lock:
                srv.active -= 1


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # loopback must not go through a proxy
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopper = threading.Timer(SERVER_LIFETIME, srv.shutdown)
    stopper.daemon = True
    stopper.start()
    yield srv
    stopper.cancel()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _good_rows(base: str, n: int) -> list[tuple[str, str]]:
    return [(f"{i:03x}abcdef{i:06d}", f"{base}/img/{i}.jpg") for i in range(1, n + 1)]


def test_download_reasons_retries_and_no_partial_files(server, tmp_path):
    base = server.base
    good = _good_rows(base, 6)
    bad = [
        ("aaa0000000000001", f"{base}/missing"),
        ("aaa0000000000002", f"{base}/slow"),
        ("aaa0000000000003", f"{base}/truncated"),
        ("aaa0000000000004", f"{base}/text"),
        ("aaa0000000000005", f"{base}/down"),
    ]
    flaky = [("fff0000000000001", f"{base}/flaky")]
    out = tmp_path / "train"
    t0 = time.monotonic()
    rep = dl.download_images(good + bad + flaky, out, workers=3, retries=2, backoff=0.05, timeout=TIMEOUT)
    elapsed = time.monotonic() - t0

    assert rep.ok == 7 and rep.skipped_existing == 0
    assert rep.failed == {"http_404": 1, "timeout": 1, "truncated": 1, "not_image": 1, "http_503": 1}
    # retryable failures are tried 1 + retries times; 404 and a non-image body only once
    assert server.hits["/missing"] == 1 and server.hits["/text"] == 1
    assert server.hits["/truncated"] == 3 and server.hits["/down"] == 3 and server.hits["/slow"] == 3
    assert server.hits["/flaky"] == 2  # 503, then the retry succeeded
    assert server.max_active <= 3  # bounded concurrency
    assert elapsed < 3 * TIMEOUT + SLOW_SECONDS + 5

    # v2 layout, each file a complete image; no partial or temporary file anywhere
    expected = sorted([str(dl.image_path(Path(""), i)) for i, _ in good + flaky] + [dl.REPORT_NAME])
    assert _files(out) == expected
    for image_id, _ in good + flaky:
        p = out / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
        with Image.open(p) as im:
            im.load()
            assert im.size == (40, 30)

    with open(out / dl.REPORT_NAME, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "url", "reason"]
    assert rows[1:] == [
        ["aaa0000000000001", f"{base}/missing", "http_404"],
        ["aaa0000000000002", f"{base}/slow", "timeout"],
        ["aaa0000000000003", f"{base}/truncated", "truncated"],
        ["aaa0000000000004", f"{base}/text", "not_image"],
        ["aaa0000000000005", f"{base}/down", "http_503"],
    ]
    assert "downloaded 7" in rep.summary() and "http_404: 1" in rep.summary()


def test_timeout_covers_the_whole_transfer(server, tmp_path):
    assert len(_jpeg(4)) / 20 * 0.1 > 2 * TIMEOUT  # the trickle lasts well beyond the time limit
    t0 = time.monotonic()
    rep = dl.download_images([("ggg0000000000001", f"{server.base}/trickle")], tmp_path, retries=0,
                             timeout=TIMEOUT)
    assert rep.failed == {"timeout": 1}
    assert time.monotonic() - t0 < TIMEOUT + 0.6
    assert _files(tmp_path) == [dl.REPORT_NAME]


def test_rerun_skips_finished_files_and_retries_failures(server, tmp_path):
    base = server.base
    rows = _good_rows(base, 4) + [("bbb0000000000001", f"{base}/missing")]
    out = tmp_path / "imgs"
    first = dl.download_images(rows, out, workers=2, retries=1, backoff=0.01, timeout=TIMEOUT)
    assert (first.ok, first.failed) == (4, {"http_404": 1})
    hits_before = dict(server.hits)

    again = dl.download_images(rows + _good_rows(base, 5)[4:], out, workers=2, retries=1, backoff=0.01,
                               timeout=TIMEOUT)
    assert (again.ok, again.skipped_existing, again.failed) == (1, 4, {"http_404": 1})
    for i in range(1, 5):  # finished files were not fetched again
        assert server.hits[f"/img/{i}.jpg"] == hits_before[f"/img/{i}.jpg"] == 1
    assert server.hits["/img/5.jpg"] == 1
    assert server.hits["/missing"] == 2  # a failure is tried again on the next run


def test_invalid_existing_file_is_replaced_and_temps_cleaned(server, tmp_path):
    out = tmp_path / "imgs"
    (image_id, url), = _good_rows(server.base, 1)
    target = dl.image_path(out, image_id)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\xff\xd8\xff half a jpeg")  # e.g. copied in by hand, cut short
    stale = target.parent / f".{target.name}.abc123.tmp"  # left by a killed run
    stale.write_bytes(b"partial")
    rep = dl.download_images([(image_id, url)], out, workers=1, retries=0, timeout=TIMEOUT)
    assert (rep.ok, rep.skipped_existing) == (1, 0)
    assert dl.is_valid_image(target) and not stale.exists()


def test_rows_rejected_without_a_request(server, tmp_path):
    base = server.base
    rows = [
        ("ccc0000000000001", "None"),  # GLD v1 has rows without a URL
        ("../../etc/passwd", f"{base}/img/1.jpg"),  # ids become file names
        ("ab", f"{base}/img/2.jpg"),  # too short for the a/b/c layout
        ("ccc0000000000002", "ftp-ish:/nowhere"),
        ("ccc0000000000003", f"{base}/img/3.jpg"),
        ("ccc0000000000003", f"{base}/img/3.jpg"),
    ]
    rep = dl.download_images(rows, tmp_path, workers=2, retries=3, backoff=0.01, timeout=TIMEOUT)
    assert rep.ok == 1
    assert rep.failed == {"no_url": 1, "bad_id": 2, "bad_url": 1, "duplicate_id": 1}
    assert sum(server.hits.values()) == 1 and server.hits["/img/3.jpg"] == 1
    assert not (tmp_path.parent / "etc").exists()


def test_connection_refused_is_retryable(tmp_path):
    srv = _Server()  # bind a port, then close it: nothing listens there
    url = f"{srv.base}/img/1.jpg"
    srv.server_close()
    rep = dl.download_images([("ddd0000000000001", url)], tmp_path, retries=2, backoff=0.01, timeout=TIMEOUT)
    assert rep.failed == {"connection": 1}


def test_retry_delay_is_exponential_and_capped():
    assert [dl.retry_delay(k, 0.5) for k in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert dl.retry_delay(30, 0.5) == dl.MAX_BACKOFF


def test_bad_options_raise_config_error(tmp_path):
    for kw in ({"workers": 0}, {"retries": -1}, {"timeout": 0}, {"layout": "v3"}):
        with pytest.raises(ConfigError):
            dl.download_images([], tmp_path, **kw)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def quiet_cli(monkeypatch):
    """The CLI re-configures logging onto stderr; keep pytest's captured stream out of it."""
    monkeypatch.setattr("common.cli.setup_logging", lambda *a, **k: None)


def test_cli_summary_limit_and_report(server, tmp_path, capsys, quiet_cli):
    base = server.base
    lines = ['"id","url","landmark_id"']
    lines += [f'"{i}","{u}","{k}"' for k, (i, u) in enumerate(_good_rows(base, 3))]
    lines += ['"eee0000000000001","' + base + '/missing","7"']
    csv_path = _write(tmp_path / "train.csv", "\n".join(lines) + "\n")
    out = tmp_path / "train"
    code = dl.main(["--csv", str(csv_path), "--out", str(out), "--workers", "2", "--retries", "1",
                    "--timeout", str(TIMEOUT), "--limit", "3"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(printed) == 1
    assert printed[0].startswith("downloaded 3, already present 0, failed 0")
    code = dl.main(["--csv", str(csv_path), "--out", str(out), "--retries", "0", "--timeout", str(TIMEOUT)])
    printed = capsys.readouterr().out.strip()
    assert code == 0 and "downloaded 0, already present 3, failed 1 (http_404: 1)" in printed
    assert str(out / dl.REPORT_NAME) in printed


@pytest.mark.parametrize(
    "text, needle",
    [
        ('"id","landmark_id"\n"abc","1"\n', "missing column(s) ['url']"),
        ("", "empty CSV"),
        ('"id","url","landmark_id"\n', "no rows"),
    ],
)
def test_cli_bad_csv_is_one_error_line(tmp_path, capsys, quiet_cli, text, needle):
    csv_path = _write(tmp_path / "train.csv", text)
    code = dl.main(["--csv", str(csv_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and str(csv_path) in err[0] and needle in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_missing_csv(tmp_path, capsys, quiet_cli):
    code = dl.main(["--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "nope.csv" in err


def test_read_url_csv_keeps_none_urls(tmp_path):
    p = _write(tmp_path / "t.csv", '"id","url","landmark_id"\n"a1b2c3","None","5"\n" d4e5f6 ","http://x/y.jpg","6"\n')
    assert dl.read_url_csv(p) == [("a1b2c3", "None"), ("d4e5f6", "http://x/y.jpg")]
    with pytest.raises(DataError):
        dl.read_url_csv(tmp_path / "absent.csv")


def test_write_failure_stops_the_run_with_one_error(server, tmp_path):
    (image_id, url), = _good_rows(server.base, 1)
    dl.image_path(tmp_path, image_id).mkdir(parents=True)  # a folder where the file must go
    with pytest.raises(PipelineError, match="cannot write"):
        dl.download_images([(image_id, url)], tmp_path, workers=1, retries=0, timeout=TIMEOUT)
    assert (tmp_path / dl.REPORT_NAME).is_file()  # the report of what was done is still written
    assert not list(tmp_path.rglob("*.tmp"))
