"""Where a bundle's bytes come from: a local directory or a URL, behind one small interface.

A ``Source`` does two things: it reads a small file whole under a size cap (the
manifest), and it reads a bundle file whole, paced, and returns its bytes only
after their size and sha256 match the manifest's entry. Everything above it
(the manifest reader, ``load_file``, ``verify``, ``ProgressiveModel``) is the
same code for a directory and for a URL.

``URLSource`` reads through fsspec: ``http://`` and ``https://`` with its HTTP
filesystem (aiohttp), any other protocol (``s3://``, ``gs://``, ``hf://`` ...) with
the filesystem the user installed. Over HTTP every request has a timeout, TLS
certificates are verified (``ca_bundle`` adds a CA file), redirects are limited
and never leave http(s) (nor https for http), and a response is read no further
than the size the manifest gives. A dropped connection resumes with a ``Range``
request from the last byte received; a server that ignores ``Range`` (answers
200) is read from the start again. Transient failures (5xx, resets, timeouts)
retry with exponential backoff up to ``retries`` times per file; 401/403/404
end the read at once. The whole load has a deadline.

``Cache`` keeps verified files content-addressed by sha256, written atomically,
and a ``URLSource`` with a cache fetches only what it lacks.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from pwl.atomic import atomic_write_bytes
from pwl.errors import CheckpointError, ConfigError
from pwl.runtime.storage import (
    FileEntry,
    LoadingStopped,
    Pacer,
    check_sha256,
    check_size,
    open_regular,
    read_file,
)

DEFAULT_TIMEOUT = 30.0   # seconds to connect, and between two reads of a response
DEFAULT_DEADLINE = 3600.0  # seconds for the whole load
DEFAULT_RETRIES = 5
MAX_REDIRECTS = 5
_CHUNK = 4 << 20
_BACKOFF = 0.25          # seconds before the first retry, doubled for each next one
_MAX_BACKOFF = 8.0
# Statuses worth asking again; every other 4xx is an answer.
_TRANSIENT_STATUS = frozenset({408, 425, 429})


class MissingFile(CheckpointError):
    """A file the source was asked for does not exist there."""


def is_url(location: str | os.PathLike) -> bool:
    """True for ``<protocol>://...`` strings (never for a ``Path``)."""
    if not isinstance(location, str):
        return False
    scheme, sep, _ = location.partition("://")
    # Two letters at least: "C://..." is a Windows path.
    return bool(sep) and len(scheme) > 1 and scheme.isascii() and \
        scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()


class Source:
    """Reads a bundle's files. ``location`` names the bundle in messages."""

    location: str | Path

    def where(self, rel: str) -> str:
        """The path or URL of bundle file ``rel``, for messages."""
        raise NotImplementedError

    def read_small(self, rel: str, cap: int) -> bytes:
        """File ``rel`` whole, or its first ``cap + 1`` bytes if it is longer.

        Raises:
            MissingFile: it does not exist.
            CheckpointError: it cannot be read.
        """
        raise NotImplementedError

    def read(self, rel: str, entry: FileEntry, pacer: Pacer | None = None) -> bytes:
        """File ``rel``, returned only if its size and sha256 match ``entry``.

        Raises:
            CheckpointError: naming the file, if it is missing, unreadable or does not match.
            LoadingStopped: the pacer's stop event was set.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Releases what the source holds (nothing for a directory)."""


class LocalSource(Source):
    """A bundle directory on disk: regular files only, never through a symbolic link."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = self.root

    def path(self, rel: str) -> Path:
        return self.root / rel

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def read_small(self, rel: str, cap: int) -> bytes:
        path = self.root / rel
        if not path.is_file():
            raise MissingFile(f"{path} does not exist")
        with open_regular(path) as f:
            return f.read(cap + 1)

    def read(self, rel: str, entry: FileEntry, pacer: Pacer | None = None) -> bytes:
        path = self.root / rel
        check_size(path, entry)
        data, sha = read_file(path, pacer, limit=entry.bytes, regular_only=True)
        check_sha256(path, entry, sha)
        return data


class Cache:
    """Verified files by sha256: ``<root>/sha256/<first two hex digits>/<hex digest>``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def path(self, entry: FileEntry) -> Path:
        # The digest matched ^[0-9a-f]{64}$ when the manifest was read: a safe file name.
        return self.root / "sha256" / entry.sha256[:2] / entry.sha256

    def get(self, entry: FileEntry) -> bytes | None:
        """The cached file of ``entry`` if its size and hash still match; else None (and a
        copy that no longer matches is removed)."""
        path = self.path(entry)
        if not path.is_file():
            return None
        try:
            data, sha = read_file(path, limit=entry.bytes, regular_only=True)
        except CheckpointError:
            return None
        if len(data) == entry.bytes and sha == entry.sha256:
            return data
        path.unlink(missing_ok=True)
        return None

    def put(self, entry: FileEntry, data: bytes) -> None:
        """Stores ``data`` (already checked against ``entry``); written whole or not at all."""
        try:
            atomic_write_bytes(self.path(entry), data)
        except OSError:
            pass  # a full or read-only cache only costs the next open a download


def default_cache_dir() -> Path:
    """``pwl/bundles`` under the user's cache directory (platformdirs)."""
    try:
        import platformdirs
    except ImportError:
        raise ConfigError("cache_dir=true needs platformdirs (pip install platformdirs); or "
                          "give cache_dir=<dir>") from None
    return Path(platformdirs.user_cache_dir("pwl")) / "bundles"


class _Transient(Exception):
    """A failure worth another request."""


class URLSource(Source):
    """A bundle at a URL, read through fsspec.

    Args:
        url: the bundle's URL (its directory; a trailing slash is added).
        timeout: http(s): seconds to connect and between two reads of one response (other
            filesystems keep their own timeouts).
        deadline: seconds from now after which every read fails; None: no deadline.
        retries: further requests for one file after transient failures.
        ca_bundle: https: a PEM file of the certificate authorities to verify against,
            instead of the system's; None: the system's.
        cache: verified files are read from and stored into it.
        storage_options: passed to the fsspec filesystem (credentials, endpoint ...).

    Attributes:
        requests: requests made for files so far; bytes: bytes received in them.
    """

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 deadline: float | None = DEFAULT_DEADLINE, retries: int = DEFAULT_RETRIES,
                 ca_bundle: str | Path | None = None, cache: Cache | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.base = url.rstrip("/") + "/"
        self.location = self.base
        protocol = self.base.split("://", 1)[0].lower()
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            raise CheckpointError(f"bundle={url}: fsspec knows no protocol {protocol!r}; give "
                                  "a directory or an http(s):// URL") from None
        except ImportError as e:
            raise CheckpointError(f"bundle={url}: the {protocol}:// filesystem is not installed "
                                  f"({str(e).splitlines()[0][:160]}); install it, e.g. "
                                  f"pip install {protocol}fs") from None
        self.http = protocol in ("http", "https")
        if self.http:
            from yarl import URL

            host = URL(self.base).host
            if not host:
                raise CheckpointError(f"bundle={url} names no host; give "
                                      "http(s)://host/path/to/bundle/")
        self.timeout = float(timeout)
        self.deadline_at = None if deadline is None else time.monotonic() + float(deadline)
        self.deadline = deadline
        self.retries = int(retries)
        self.cache = cache
        self.requests = 0
        self.bytes = 0
        if self.http:
            self.fs = fsspec.filesystem(protocol, **(storage_options or {}))
            self.root = self.base
            self._request = self._http_options(ca_bundle)
        else:
            self.fs, root = fsspec.core.url_to_fs(self.base, **(storage_options or {}))
            self.root = root.rstrip("/") + "/"
            self._request = {}

    def _http_options(self, ca_bundle: str | Path | None) -> dict[str, Any]:
        import ssl

        import aiohttp

        if ca_bundle is not None:
            if not Path(ca_bundle).is_file():
                raise ConfigError(f"ca_bundle={ca_bundle} does not exist; give a PEM file of "
                                  "certificate authorities")
            tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_bundle))
        else:
            tls = True  # aiohttp verifies against the system's authorities
        return {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                                 sock_read=self.timeout),
                "ssl": tls, "allow_redirects": True, "max_redirects": MAX_REDIRECTS,
                # Bytes as stored: a compressed body would not match Range offsets.
                "headers": {"Accept-Encoding": "identity"}}

    def where(self, rel: str) -> str:
        return self.base + rel

    # --- reading ---------------------------------------------------------------------

    def read_small(self, rel: str, cap: int) -> bytes:
        return self._fetch(rel, cap, None, exact=False).data()

    def read(self, rel: str, entry: FileEntry, pacer: Pacer | None = None) -> bytes:
        if self.cache is not None:
            data = self.cache.get(entry)
            if data is not None:
                return data
        body = self._fetch(rel, entry.bytes, pacer or Pacer(), exact=True)
        data = body.data()
        check_sha256(self.where(rel), entry, body.sha256())  # type: ignore[arg-type]
        if self.cache is not None:
            self.cache.put(entry, data)
        return data

    def _fetch(self, rel: str, size: int, pacer: Pacer | None, exact: bool) -> _Body:
        """File ``rel``: at most ``size`` bytes (plus one to show it is longer, unless
        ``exact``, where it is exactly ``size`` bytes or an error), resumed across failures."""
        url = self.where(rel)
        buf = _Body()
        failures = 0
        while True:
            self._check_deadline(url)
            try:
                stream, start = self._open_at(rel, len(buf))
                if start != len(buf):
                    buf.clear()  # the server ignored Range: the body starts at byte 0
                try:
                    done = self._read_body(stream, buf, size, pacer, url, exact)
                finally:
                    stream.close()
                if done:
                    return buf
                raise _Transient(f"the response ended at byte {len(buf)} of {size}")
            except _Transient as e:
                failures += 1
                if failures > self.retries:
                    raise CheckpointError(f"cannot download {url}: {e} (gave up after "
                                          f"{self.retries} retries); check the server and the "
                                          "link, or raise retries=") from None
                self._sleep(min(_BACKOFF * 2 ** (failures - 1), _MAX_BACKOFF), pacer, url)

    def _read_body(self, stream: Any, buf: _Body, size: int, pacer: Pacer | None,
                   url: str, exact: bool) -> bool:
        """Appends the response to ``buf``; True once the file is whole."""
        want = size if exact else size + 1
        step = pacer.chunk_size if pacer is not None and pacer.rate is not None else _CHUNK
        try:
            while len(buf) < want:
                chunk = stream.read(min(step, want - len(buf)))
                if not chunk:
                    return not exact  # the body ended: whole unless the size is known
                buf.append(chunk)
                self.bytes += len(chunk)
                if pacer is not None:
                    pacer.consumed(len(chunk))
                self._check_deadline(url)
            if not exact:
                return True  # cap + 1 bytes: the caller says it is too long
            try:
                extra = stream.read(1)
            except Exception:  # the connection broke after the last byte: whole
                return True
        except (LoadingStopped, CheckpointError):
            raise
        except Exception as e:
            raise self._classify(e, url) from None
        if extra:
            raise CheckpointError(f"{url} is longer than the {size} bytes the manifest says; "
                                  "the file on the server is replaced, re-export the bundle and "
                                  "upload it again")
        return True

    def _open_at(self, rel: str, offset: int) -> tuple[Any, int]:
        """A stream of file ``rel`` from ``offset``, and the byte it really starts at."""
        url = self.where(rel)
        self.requests += 1
        try:
            if not self.http:
                f = self.fs.open(self.root + rel, "rb")
                if offset:
                    f.seek(offset)
                return f, offset
            options = dict(self._request)
            if offset:
                options["headers"] = {**options["headers"], "Range": f"bytes={offset}-"}
            # size= spares fsspec a HEAD request; block_size=0 streams one GET.
            f = self.fs.open(url, "rb", block_size=0, size=1, **options)
        except (LoadingStopped, CheckpointError):
            raise
        except Exception as e:
            raise self._classify(e, url) from None
        final = f.r.url
        if final.scheme not in ("http", "https") or (url.startswith("https:")
                                                      and final.scheme != "https"):
            f.close()
            raise CheckpointError(f"{url} redirects to {str(final)[:200]}; a bundle is read over "
                                  "http(s) only and https never falls back to http, fix the "
                                  "server's redirect")
        if f.r.status == 206:
            first = _content_range_start(f.r.headers.get("Content-Range", ""))
            if first != offset:
                f.close()
                raise _Transient(f"a range from byte {offset} was answered from byte {first}")
            return f, offset
        if f.r.status != 200:
            f.close()
            raise _Transient(f"HTTP {f.r.status}")
        return f, 0

    def _classify(self, error: Exception, url: str) -> Exception:
        """``_Transient`` for what another request may cure, else a one-line CheckpointError."""
        import asyncio

        if isinstance(error, FileNotFoundError):
            return MissingFile(f"{url} was not found (404); the bundle lacks this file or "
                                   "the URL is wrong, check bundle=")
        if isinstance(error, PermissionError):
            return CheckpointError(f"{url} is forbidden ({error}); check the server's access "
                                   "rules or the credentials")
        if self.http:
            import aiohttp

            if isinstance(error, aiohttp.ClientResponseError) and not isinstance(
                    error, aiohttp.TooManyRedirects):
                status = error.status
                if status >= 500 or status in _TRANSIENT_STATUS:
                    return _Transient(f"HTTP {status} {error.message}")
                return CheckpointError(f"{url} answered HTTP {status} {error.message}; "
                                       + ("the server refuses it, check its access rules"
                                          if status in (401, 403) else "check bundle="))
            if isinstance(error, aiohttp.TooManyRedirects):
                return CheckpointError(f"{url} redirects more than {MAX_REDIRECTS} times; fix "
                                       "the URL or the server's redirects")
            if isinstance(error, aiohttp.RedirectClientError):  # e.g. to a non-http URL
                return CheckpointError(f"{url} redirects to {str(error)[:200]}; a bundle is "
                                       "read over http(s) only, fix the server's redirect")
            if isinstance(error, (aiohttp.ClientSSLError, aiohttp.InvalidURL)):
                return CheckpointError(f"{url}: {type(error).__name__}: "
                                       f"{str(error)[:200]}; "
                                       + ("give ca_bundle=<PEM file> for a private authority"
                                          if isinstance(error, aiohttp.ClientSSLError)
                                          else "check bundle="))
            if isinstance(error, aiohttp.ClientConnectorError):
                return _Transient(f"cannot connect ({error.os_error or error})")
            if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
                return _Transient(f"no data for {self.timeout:g} s (timeout=)")
            if isinstance(error, aiohttp.ClientError):
                return _Transient(f"{type(error).__name__}: {str(error)[:160]}")
        if isinstance(error, (TimeoutError, OSError)):
            return _Transient(f"{type(error).__name__}: {str(error)[:160]}")
        return CheckpointError(f"cannot download {url}: {type(error).__name__}: "
                               f"{str(error)[:200]}")

    def _check_deadline(self, url: str) -> None:
        if self.deadline_at is not None and time.monotonic() > self.deadline_at:
            raise CheckpointError(f"cannot download {url}: the load passed its deadline of "
                                  f"{self.deadline:g} s; raise deadline= or use a faster link")

    def _sleep(self, seconds: float, pacer: Pacer | None, url: str) -> None:
        if self.deadline_at is not None:
            seconds = min(seconds, max(self.deadline_at - time.monotonic(), 0.0))
        stop = pacer.stop if pacer is not None else None
        if stop is not None:
            if stop.wait(seconds):
                raise LoadingStopped
        else:
            time.sleep(seconds)


class _Body:
    """A download's bytes so far, hashed as they arrive."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._hash = hashlib.sha256()

    def append(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        self._hash.update(chunk)

    def __len__(self) -> int:
        return self._size

    def data(self) -> bytes:
        return b"".join(self._chunks)

    def sha256(self) -> str:
        return self._hash.hexdigest()


def _content_range_start(header: str) -> int | None:
    """The first byte of ``Content-Range: bytes a-b/n``, or None."""
    unit, _, spec = header.partition(" ")
    first = spec.split("-", 1)[0]
    return int(first) if unit.strip() == "bytes" and first.isdigit() else None


def open_source(bundle: str | Path | Source, *, cache_dir: str | Path | bool | None = None,
                **url_options: Any) -> Source:
    """The source of ``bundle``: itself, a ``LocalSource`` for a path, a ``URLSource`` for
    ``<protocol>://...``.

    Args:
        cache_dir: URLs only. None or False: no cache (nothing is written); True: the user's
            cache directory (``default_cache_dir``); a path: that directory.
        url_options: ``URLSource``'s timeout, deadline, retries, ca_bundle, storage_options.
    """
    if isinstance(bundle, Source):
        return bundle
    if isinstance(bundle, str) and is_url(bundle):
        cache = None
        if cache_dir is True:
            cache = Cache(default_cache_dir())
        elif cache_dir:
            cache = Cache(cache_dir)
        return URLSource(bundle, cache=cache, **url_options)
    return LocalSource(Path(bundle).expanduser())

_URL_KEYS = ("cache_dir", "timeout", "deadline", "retries", "ca_bundle")


def url_options(cfg: Any) -> dict[str, Any]:
    """``ProgressiveModel.open``'s URL arguments from an entry point's config: its keys
    ``cache_dir``, ``timeout``, ``deadline``, ``retries`` and ``ca_bundle`` where present
    (a null timeout or retries: the default)."""
    options = {key: cfg[key] for key in _URL_KEYS if key in cfg}
    for key in ("timeout", "retries"):
        if options.get(key) is None:
            options.pop(key, None)
    return options


__all__ = ["DEFAULT_DEADLINE", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT", "Cache", "LocalSource",
           "MissingFile", "Source", "URLSource", "default_cache_dir", "is_url", "open_source", "url_options"]
