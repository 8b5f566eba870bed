"""Google-Landmarks v1 image downloader: ``train.csv`` (``"id","url","landmark_id"``) -> JPEG files.

GLD v1 ships URLs, not images. This fetches them with a bounded thread pool into the GLD v2
layout (``out/<a>/<b>/<c>/<id>.jpg``) so the v2 reader serves both versions. Built for a long,
interruptible run over a million URLs:

- resume: a file that already exists and opens as an image is not fetched again;
- atomic: the body is checked to decode as an image (PIL) and only then written through a
  temporary file in the destination folder and renamed, so there is never a partial JPEG;
- retries with exponential back-off only for failures that can pass (timeouts, 5xx/408/429,
  dropped connections, truncated bodies); 404 or a non-image body fail at once;
- a per-file time limit covers the whole transfer, not only each socket read;
- failures go to a CSV (``id,url,reason``), rewritten atomically on every run.

Only the standard library (urllib) and PIL are used.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import logging
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from common.cli import run_main
from common.errors import ConfigError, DataError, PipelineError
from common.io import atomic_write, cleanup_temp_files

log = logging.getLogger(__name__)

LAYOUTS = ("v2", "flat")
REPORT_NAME = "download_failures.csv"
REPORT_COLUMNS = ["id", "url", "reason"]
USER_AGENT = "Mozilla/5.0 (compatible; landmark-pipeline-downloader/1.0)"
MAX_BYTES = 50 * 1024 * 1024  # larger bodies are not photos worth keeping
MAX_BACKOFF = 30.0
_ID_RE = re.compile(r"[A-Za-z0-9_-]+")  # ids become file names: no dots, slashes or spaces
_RETRYABLE_HTTP = {408, 425, 429}
_NO_URL = {"", "none", "nan", "null"}  # GLD v1 has rows whose url is the string "None"


@dataclass
class DownloadReport:
    """Counts of one run; ``failed`` maps reason -> count, ``failures`` lists (id, url, reason)."""

    ok: int = 0
    skipped_existing: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    report_path: Path | None = None
    seconds: float = 0.0

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.failed.items()))
        line = (f"downloaded {self.ok}, already present {self.skipped_existing}, "
                f"failed {self.n_failed}{f' ({reasons})' if reasons else ''} in {self.seconds:.1f}s")
        if self.report_path is not None and self.n_failed:
            line += f"; failures listed in {self.report_path}"
        return line


class _Failure(Exception):
    def __init__(self, reason: str, retryable: bool, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.retryable = retryable


def image_path(out_root: str | Path, image_id: str, layout: str = "v2") -> Path:
    """Where the image of ``image_id`` goes: ``out/<a>/<b>/<c>/<id>.jpg`` (v2) or ``out/<id>.jpg``."""
    out_root = Path(out_root)
    if layout == "v2":
        return out_root / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
    return out_root / f"{image_id}.jpg"


def retry_delay(attempt: int, backoff: float) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): backoff, 2*backoff, 4*backoff ... capped."""
    return min(backoff * 2 ** (attempt - 1), MAX_BACKOFF)


def is_valid_image(path: Path) -> bool:
    """Cheap resume check: the file is non-empty and PIL recognises and verifies it as an image.

    (Files are written atomically after a full decode, so a complete-looking file is trusted;
    ``verify`` catches files put there by something else.)
    """
    try:
        if path.stat().st_size == 0:
            return False
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # any decoder error on a file of unknown origin: fetch it again
        return False


def _check_image(data: bytes) -> None:
    """Raise a non-retryable failure unless ``data`` decodes completely as an image."""
    if not data:
        raise _Failure("not_image", False, "empty body")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # full decode: a truncated JPEG fails here (unless LOAD_TRUNCATED_IMAGES)
    except Exception as e:  # untrusted bytes: any decoder error (struct.error, ...) means "not an image"
        raise _Failure("not_image", False, f"{type(e).__name__}: {e}") from None


def _fetch(url: str, timeout: float) -> bytes:
    """GET ``url`` within ``timeout`` seconds in total; failures become :class:`_Failure`."""
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if expected is not None and expected > MAX_BYTES:
                raise _Failure("too_large", False, f"Content-Length {expected}")
            chunks, got = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise _Failure("timeout", True, f"transfer longer than {timeout}s")
                chunk = resp.read1(64 * 1024)  # one socket read, so the deadline is checked often
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
                if got > MAX_BYTES:
                    raise _Failure("too_large", False, f"more than {MAX_BYTES} bytes")
    except _Failure:
        raise
    except urllib.error.HTTPError as e:
        code = e.code
        e.close()  # release the connection now, not at garbage collection
        raise _Failure(f"http_{code}", code >= 500 or code in _RETRYABLE_HTTP, str(e)) from None
    except TimeoutError as e:
        raise _Failure("timeout", True, str(e)) from None
    except http.client.IncompleteRead as e:
        raise _Failure("truncated", True, repr(e)) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise _Failure("timeout", True, str(e.reason)) from None
        raise _Failure("connection", True, str(e.reason)) from None
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        raise _Failure("connection", True, f"{type(e).__name__}: {e}") from None
    except ValueError as e:  # unknown url type, malformed URL
        raise _Failure("bad_url", False, str(e)) from None
    if expected is not None and got < expected:
        raise _Failure("truncated", True, f"{got} of {expected} bytes")
    return b"".join(chunks)


def _download_one(image_id: str, url: str, out_root: Path, layout: str, retries: int, backoff: float,
                  timeout: float) -> str:
    """Fetch one image; returns "ok" or "existing", raises :class:`_Failure` with the last reason."""
    if not _ID_RE.fullmatch(image_id) or (layout == "v2" and len(image_id) < 3):
        raise _Failure("bad_id", False, f"id {image_id!r} cannot be a file name")
    path = image_path(out_root, image_id, layout)
    if path.is_file() and is_valid_image(path):
        return "existing"
    if url.strip().lower() in _NO_URL:
        raise _Failure("no_url", False)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:  # never file:// or ftp://
        raise _Failure("bad_url", False, f"not an http(s) URL: {url!r}")
    attempt = 0
    while True:
        try:
            data = _fetch(url, timeout)
            _check_image(data)
            break
        except _Failure as f:
            if not f.retryable or attempt >= retries:
                raise
            attempt += 1
            log.debug("%s: %s, retry %d/%d", image_id, f, attempt, retries)
            time.sleep(retry_delay(attempt, backoff))
    try:
        with atomic_write(path, "wb") as fh:
            fh.write(data)
    except OSError as e:  # disk full, permissions: stop the run, not one row
        raise PipelineError(f"cannot write {path}: {e.strerror or e}") from None
    return "ok"


def write_failures(path: str | Path, failures: Sequence[tuple[str, str, str]]) -> None:
    """Write the failure report (``id,url,reason``, sorted by id) atomically."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(REPORT_COLUMNS)
        w.writerows(sorted(failures))


class _Recorder:
    """Counts each finished download into the report (and logs progress every N rows)."""

    def __init__(self, report: DownloadReport, failed: Counter, progress_every: int) -> None:
        self.report, self.failed, self.every, self.done = report, failed, progress_every, 0

    def __call__(self, image_id: str, url: str, fut: Future) -> None:
        self.done += 1
        try:
            status = fut.result()
        except _Failure as f:
            self.failed[f.reason] += 1
            self.report.failures.append((image_id, url, f.reason))
            log.debug("%s failed: %s (%s)", image_id, f.reason, f)
        else:
            if status == "ok":
                self.report.ok += 1
            else:
                self.report.skipped_existing += 1
        if self.every and self.done % self.every == 0:
            log.info("%d done: %d downloaded, %d present, %d failed", self.done, self.report.ok,
                     self.report.skipped_existing, sum(self.failed.values()))


def _check_settings(workers: int, retries: int, backoff: float, timeout: float, layout: str) -> None:
    if workers < 1:
        raise ConfigError(f"download: workers must be >= 1, got {workers}")
    if retries < 0:
        raise ConfigError(f"download: retries must be >= 0, got {retries}")
    if timeout <= 0 or backoff < 0:
        raise ConfigError(f"download: timeout must be > 0 and backoff >= 0, got {timeout} and {backoff}")
    if layout not in LAYOUTS:
        raise ConfigError(f"download: layout must be one of {LAYOUTS}, got '{layout}'")


def download_images(rows: Iterable[tuple[str, str]], out_root: str | Path, *, workers: int = 8,
                    retries: int = 3, backoff: float = 0.5, timeout: float = 10.0, layout: str = "v2",
                    report_path: str | Path | None = None, clean_temps: bool = True,
                    progress_every: int = 1000) -> DownloadReport:
    """Download ``(id, url)`` pairs into ``out_root``; returns counts and writes the failure CSV.

    At most ``workers`` downloads run at once and only a few times that many rows are queued, so
    memory stays flat for a million rows. ``report_path`` defaults to
    ``out_root/download_failures.csv`` and is written even when nothing failed (a stale list from
    an earlier run must not survive). Temporaries left by a killed run are removed first.
    """
    _check_settings(workers, retries, backoff, timeout, layout)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    report = DownloadReport(report_path=Path(report_path) if report_path else out_root / REPORT_NAME)
    if clean_temps:
        n = cleanup_temp_files(out_root)
        if n:
            log.info("removed %d temporary file(s) left by an interrupted run", n)
    failed: Counter[str] = Counter()
    seen: set[str] = set()
    start = time.monotonic()
    record = _Recorder(report, failed, progress_every)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download")
    pending: dict[Future, tuple[str, str]] = {}
    try:
        for image_id, url in rows:
            image_id, url = str(image_id).strip(), str(url).strip()
            if image_id in seen:  # two rows, one file: fetch it once
                failed["duplicate_id"] += 1
                report.failures.append((image_id, url, "duplicate_id"))
                continue
            seen.add(image_id)
            fut = pool.submit(_download_one, image_id, url, out_root, layout, retries, backoff, timeout)
            pending[fut] = (image_id, url)
            if len(pending) >= 4 * workers:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    record(*pending.pop(f), f)
        for f in list(pending):
            record(*pending.pop(f), f)
    finally:
        # on Ctrl-C: drop queued work, finish what runs, still write the report of what was done
        pool.shutdown(wait=True, cancel_futures=True)
        report.failed = dict(failed)
        report.seconds = time.monotonic() - start
        write_failures(report.report_path, report.failures)
    return report


def read_url_csv(path: str | Path) -> list[tuple[str, str]]:
    """``(id, url)`` pairs of a GLD v1 ``train.csv``/``test.csv`` (other columns ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"URL csv not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, encoding="utf-8-sig", keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty CSV (expected header id,url,landmark_id)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("id", "url") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (found {list(df.columns)}; "
                        f"expected GLD v1 \"id\",\"url\",\"landmark_id\")")
    if df.empty:
        raise DataError(f"{path}: no rows")
    return list(zip(df["id"].str.strip(), df["url"].str.strip()))


def _cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_prep.download", description=__doc__.splitlines()[0])
    ap.add_argument("--csv", required=True, help="GLD v1 train.csv/test.csv (columns id, url)")
    ap.add_argument("--out", required=True, help="image folder (v2 layout: OUT/a/b/c/<id>.jpg)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds (then doubled)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds allowed per file")
    ap.add_argument("--limit", type=int, default=None, help="only the first N rows")
    ap.add_argument("--layout", choices=LAYOUTS, default="v2")
    ap.add_argument("--report", default=None, help=f"failure CSV (default OUT/{REPORT_NAME})")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {args.limit}")
    rows = read_url_csv(args.csv)[: args.limit]
    report = download_images(rows, args.out, workers=args.workers, retries=args.retries, backoff=args.backoff,
                             timeout=args.timeout, layout=args.layout, report_path=args.report)
    print(report.summary())
    # every attempted file failed (offline? wrong CSV?) -> exit 1; a few dead URLs are normal -> 0
    return 1 if report.n_failed and not (report.ok or report.skipped_existing) else 0


def main(argv: list[str] | None = None) -> int:
    """CLI: one summary line; a bad CSV or option is one ``error: ...`` line and exit code 2."""
    return run_main(_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
