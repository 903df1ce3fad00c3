"""Bundle download over HTTP(S): resumes a partial file with Range, enforces the expected size
and a hard limit, and checks the SHA-256 before handing the file over.

Transient failures (connection refused or reset, timeouts, 5xx, 408/429) are retried with
exponential backoff and jitter (agent.retry) for up to two minutes, each retry resuming where
the last one stopped, so an install command that arrives just before a fleet restart still
succeeds; a definite answer (404, 403, ...) fails at once."""

from __future__ import annotations

import http.client
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from agent.canonical import file_sha256
from agent.retry import Backoff

log = logging.getLogger(__name__)
_CHUNK = 1 << 20
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(Exception):
    """The bundle could not be fetched or does not match what the command announced."""


def _sha256(path: Path) -> str:
    return file_sha256(path, _CHUNK)


def download(url: str, dest: Path, *, expected_size: int | None, expected_sha256: str | None,
             max_bytes: int, timeout_s: float = 30.0, attempts: int | None = None, ca_file: str = "",
             backoff: Backoff | None = None, sleep: Callable[[float], None] = time.sleep) -> Path:
    """Fetch `url` to `dest` (a partial `dest.part` is resumed). Returns dest.
    `ca_file` trusts a private CA for https:// (the system store otherwise). `attempts` caps
    the tries (default: as many as `backoff`'s time budget allows)."""
    context = ssl.create_default_context(cafile=ca_file) if ca_file and url.startswith("https://") else None
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if expected_size is not None and expected_size > max_bytes:
        raise DownloadError(f"bundle is {expected_size} bytes, the limit is {max_bytes}")
    if dest.exists() and expected_sha256 and _sha256(dest) == expected_sha256:
        return dest
    part = dest.with_name(dest.name + ".part")
    limit = expected_size if expected_size is not None else max_bytes
    last: Exception | None = None
    backoff = backoff or Backoff()
    if attempts is not None:
        backoff.max_attempts = attempts
    delays = backoff.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            _attempt(url, part, limit, expected_size, timeout_s, context)
            break
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.exists():  # range not satisfiable: our partial file is stale
                part.unlink(missing_ok=True)
            elif exc.code not in RETRYABLE_HTTP:
                raise DownloadError(f"cannot download {url}: {exc}") from exc
            last = exc
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
            last = exc   # refused, reset, cut short mid-body (IncompleteRead): resume with Range
        delay = next(delays, None)
        if delay is None:
            raise DownloadError(f"cannot download {url} after {attempt} attempts: {last}")
        log.warning("event=download-retry url=%s attempt=%d delay_s=%.2f error=%s", url, attempt, delay, last)
        sleep(delay)
    return _finish(url, part, dest, expected_size, expected_sha256, last)


def _attempt(url: str, part: Path, limit: int, expected_size: int | None, timeout_s: float,
             context: ssl.SSLContext | None) -> None:
    """One try: resume `part` with Range where it has bytes; raise what the retry loop judges."""
    have = part.stat().st_size if part.exists() else 0
    if have > limit:
        part.unlink()
        have = 0
    if expected_size is not None and have == expected_size:
        return
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp:  # noqa: S310 - http(s) only, checked in config
        if have and resp.status != 206:
            have = 0  # server ignored Range: start over
        with open(part, "ab" if have else "wb") as out:
            while chunk := resp.read(_CHUNK):
                have += len(chunk)
                if have > limit:
                    raise DownloadError(f"download exceeds {limit} bytes")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    if expected_size is not None and have < expected_size:
        # the server went away mid-body (urllib then just ends the stream): resume
        raise ConnectionResetError(f"transfer cut short at {have} of {expected_size} bytes")


def _finish(url: str, part: Path, dest: Path, expected_size: int | None, expected_sha256: str | None,
            last: Exception | None) -> Path:
    """Check the complete file's size and digest, then move it into place."""
    if not part.exists():
        raise DownloadError(f"cannot download {url}: {last}")
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DownloadError(f"downloaded {size} bytes, expected {expected_size}")
    if expected_sha256 and _sha256(part) != expected_sha256:
        part.unlink(missing_ok=True)
        raise DownloadError("downloaded bundle's SHA-256 differs from the command's bundle_sha256")
    os.replace(part, dest)
    return dest
