"""``file:`` targets: endpoints (and optionally a service config) from a JSON file.

``file:///etc/myapp/endpoints.json`` (absolute) or ``file:endpoints.json`` (relative to
the working directory); the format is in :mod:`lbclient.resolver._file_format`.

The file is polled every ``resolver_options["poll_interval"]`` seconds (default 1 s): its
inode, size and modification time are compared with the last read, and when any changed
the content is read and hashed, so editors that write in place and tools that rename a
new file over the old one are both seen, and a touch without a change delivers nothing.
``resolve_now()`` re-checks at once.

A missing, unreadable or malformed file is logged (with the JSON path of the error) and
reported to the listener, which keeps the last good endpoints; the same error is reported
once, not on every poll. Writers should replace the file atomically (write a temporary
file, then rename it) so a half-written file is never read; a half-written one is only
logged and re-read on the next change.

Threading: one daemon thread per resolver; the listener is called from it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidTargetError, ResolverError, ServiceConfigError
from . import _options
from ._file_format import parse_endpoints_json
from ._worker import Worker
from .base import Resolver, ResolverListener, ResolverState, Target
from .registry import register_resolver

log = logging.getLogger("lbclient.resolver.file")

OPTIONS = {"poll_interval"}
_MAX_BYTES = 64 * 1024 * 1024


def file_path(target: Target) -> str:
    """The file a ``file:`` target names (``file:///abs``, ``file:/abs``, ``file:rel``,
    ``file://localhost/abs``)."""
    where = f"target {target.raw!r}"
    if target.authority not in ("", "localhost"):
        raise InvalidTargetError(f"{where}: file targets take no host (got "
                                 f"{target.authority!r}); write file:///path")
    rest = target.raw.split(":", 1)[1]
    path = "/" + target.endpoint if rest.startswith("//") else target.endpoint
    if not path or path.endswith("/"):
        raise InvalidTargetError(f"{where}: expected file:///path/to/endpoints.json")
    return path


def validate_file_target(target: Target) -> None:
    file_path(target)


class FileResolver(Resolver):
    def __init__(self, target: Target, listener: ResolverListener,
                 options: Mapping[str, Any]) -> None:
        super().__init__(target, listener, options)
        self.path = file_path(target)
        _options.check_known(options, "file", OPTIONS)
        self.poll_interval = _options.seconds(options, "poll_interval", 1.0)
        self._signature: tuple[int, ...] | None = None
        self._digest: bytes | None = None      # of the content last parsed (good or bad)
        self._last_error: str | None = None
        self.reads = 0                          # times the content was read and parsed
        self._worker = Worker(f"lbclient-file-{os.path.basename(self.path)}", listener,
                              self._run)

    def start(self) -> None:
        self._worker.start()

    def resolve_now(self) -> None:
        self._worker.wake()

    def close(self) -> None:
        self._worker.stop()

    # ----------------------------------------------------------------- the thread
    def _run(self, worker: Worker) -> None:
        while not worker.stopped:
            self._check(worker)
            worker.wait(self.poll_interval)

    def _check(self, worker: Worker) -> None:
        try:
            st = os.stat(self.path)
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if signature == self._signature:
                return
            if st.st_size > _MAX_BYTES:
                raise ResolverError(f"file {self.path}: {st.st_size} bytes is too large "
                                    f"(limit {_MAX_BYTES})")
            with open(self.path, "rb") as f:
                content = f.read(_MAX_BYTES + 1)
        except OSError as exc:
            self._signature = self._digest = None
            self._report(worker, ResolverError(f"file {self.path}: cannot read it: "
                                               f"{exc.strerror or exc}"))
            return
        except ResolverError as exc:
            self._signature = self._digest = None
            self._report(worker, exc)
            return
        # The signature taken *before* reading: a write racing with the read changes the
        # file's stat again, so the next poll reads it once more.
        self._signature = signature
        digest = hashlib.sha256(content).digest()
        if digest == self._digest:
            return
        self._digest = digest
        self.reads += 1
        try:
            state = parse_endpoints_json(content)
        except ServiceConfigError as exc:
            self._report(worker, ResolverError(f"file {self.path}: {exc}"))
            return
        self._last_error = None
        log.info("file %s: %d endpoints", self.path, len(state.endpoints))
        worker.deliver(ResolverState(endpoints=state.endpoints,
                                     service_config=state.service_config,
                                     authoritative=True,
                                     attributes={"path": self.path}))

    def _report(self, worker: Worker, error: ResolverError) -> None:
        message = str(error)
        if message == self._last_error:
            return
        self._last_error = message
        log.warning("%s (keeping the last good endpoints)", message)
        worker.fail(error)


register_resolver("file", FileResolver, validate=validate_file_target)
