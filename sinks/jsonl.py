"""JSON Lines persistence: one file per run and kind, whole-line appends, size rotation.

Layout under ``root``: ``<run>/metrics.jsonl``, ``<run>/episodes.jsonl``,
``<run>/events.jsonl``, ``<run>/alerts.jsonl``, ``<run>/bus.jsonl`` (gaps), and for
node-scoped messages ``_nodes/<node>/system.jsonl`` (and ``alerts``, ``bus``). Rotated
files are ``metrics.000001.jsonl``, ``metrics.000002.jsonl``, … (oldest first); the
unnumbered file is always the newest. A line is the message payload as JSON; NaN and
±Inf are written as Python's ``NaN``/``Infinity`` tokens, which ``json``, pandas and
DuckDB read back.

Why lines are buffered and written with one ``os.write`` per file: a write of whole lines
either lands or not, so a killed sink leaves at most one torn final line, and a short
write (disk full) is undone with ``ftruncate`` so no corrupt line is ever left behind.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bus.message import Message

log = logging.getLogger("metricbus.jsonl")

FILE_NAMES: Final = {
    "metrics": "metrics",
    "episode": "episodes",
    "event": "events",
    "alert": "alerts",
    "system": "system",
    "bus": "bus",
}
NODES_DIR: Final = "_nodes"
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")
#: Bytes read from the end of each file on start to recover the last seq per publisher.
_TAIL_BYTES: Final = 256 * 1024
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode


def safe_name(name: str) -> str:
    """A file-system-safe directory name for a run or node."""
    cleaned = _UNSAFE.sub("_", name) or "_"
    return "_" if cleaned in (".", "..") else cleaned


def relative_path(message: Message) -> Path:
    """Where ``message`` goes, relative to the root."""
    file = FILE_NAMES[message.kind] + ".jsonl"
    if message.run is not None and message.kind != "system":
        return Path(safe_name(message.run)) / file
    return Path(NODES_DIR) / safe_name(message.node) / file


def rotated_name(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}.{index:06d}{path.suffix}")


class _File:
    """One open JSONL file with its pending whole lines."""

    __slots__ = ("fd", "lines", "path", "pending_bytes", "size")

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = _drop_torn_tail(self.fd)
        self.lines: list[str] = []
        self.pending_bytes = 0


def _drop_torn_tail(fd: int) -> int:
    """Truncate a partial last line left by a killed writer; returns the file size."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    with os.fdopen(os.dup(fd), "rb") as f:
        start = max(0, size - _TAIL_BYTES)
        f.seek(start)
        tail = f.read()
    if tail.endswith(b"\n"):
        return size
    cut = tail.rfind(b"\n")
    new_size = start + cut + 1 if cut >= 0 else start
    os.ftruncate(fd, new_size)
    log.warning("dropped a torn last line (%d bytes) at the end of a file", size - new_size)
    return new_size


class JsonlSink:
    """Writes every message it is given as one JSON line; see the module docstring."""

    def __init__(
        self,
        root: str = "logs",
        fsync_interval: float = 1.0,
        rotate_bytes: int = 256 * 1024 * 1024,
        max_pending_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.root = Path(root)
        self.fsync_interval = fsync_interval
        self.rotate_bytes = rotate_bytes
        self.max_pending_bytes = max_pending_bytes
        self.lines_written = 0
        self.lines_dropped = 0
        self.write_errors = 0
        self._files: dict[Path, _File] = {}
        self._by_source: dict[tuple[str, str | None, str], _File] = {}
        self._last_fsync = time.monotonic()
        self._dirty_since_fsync: set[_File] = set()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- Sink protocol ----------------------------------------------------------------------

    def handle(self, batch: Sequence[Message]) -> None:
        # Lines reach the OS at the end of every batch (latency: a line is readable within
        # one batch of its arrival); fsync, the expensive part, runs on its own interval.
        by_source = self._by_source
        touched: set[_File] = set()
        for message in batch:
            key = (message.kind, message.run, message.node)
            target = by_source.get(key)
            if target is None:
                target = by_source[key] = self._open(relative_path(message))
            line = _encode(message.to_dict()) + "\n"
            target.lines.append(line)
            target.pending_bytes += len(line)
            touched.add(target)
        for target in touched:
            self._write(target)

    def flush(self) -> None:
        for target in self._files.values():
            if target.lines:
                self._write(target)
        if time.monotonic() - self._last_fsync >= self.fsync_interval:
            self._fsync()

    def close(self) -> None:
        self.flush()
        self._fsync()
        for target in self._files.values():
            os.close(target.fd)
        self._files.clear()
        self._by_source.clear()

    # -- recovery after a restart ------------------------------------------------------------

    def last_seen(self) -> dict[str, int]:
        """Last seq per publisher found at the end of the current files (for gap detection)."""
        last: dict[str, int] = {}
        for path in self.root.glob("**/*.jsonl"):
            if re.search(r"\.\d{6}\.jsonl$", path.name):
                continue
            try:
                with path.open("rb") as f:
                    f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
                    tail = f.read()
            except OSError:
                continue
            for raw in tail.split(b"\n")[1:] if len(tail) >= _TAIL_BYTES else tail.split(b"\n"):
                try:
                    record = json.loads(raw)
                    pub, seq = record["pub"], record["seq"]
                except (ValueError, KeyError, TypeError):
                    continue
                if isinstance(pub, str) and isinstance(seq, int) and seq > last.get(pub, -1):
                    last[pub] = seq
        return last

    # -- internals ---------------------------------------------------------------------------

    def _open(self, relative: Path) -> _File:
        path = self.root / relative
        target = self._files.get(path)
        if target is None:
            target = self._files[path] = _File(path)
        return target

    def _write(self, target: _File) -> None:
        data = "".join(target.lines).encode()
        if target.size and target.size + len(data) > self.rotate_bytes:
            self._rotate(target)
        try:
            written = os.write(target.fd, data)
        except OSError as exc:
            written = 0
            error: OSError | None = exc
        else:
            error = None
        if written == len(data):
            target.size += written
            self.lines_written += len(target.lines)
            target.lines.clear()
            target.pending_bytes = 0
            self._dirty_since_fsync.add(target)
            return
        # Short write or error (disk full): undo the partial write so no torn line remains,
        # keep the lines for the next flush, and drop the oldest only past the bound.
        if written:
            os.ftruncate(target.fd, target.size)
        self.write_errors += 1
        reason = errno.errorcode.get(error.errno or 0, str(error)) if error else "short write"
        log.warning("cannot write %s (%s); keeping %d lines for the next try", target.path, reason, len(target.lines))
        while target.pending_bytes > self.max_pending_bytes and target.lines:
            target.pending_bytes -= len(target.lines.pop(0))
            self.lines_dropped += 1
        if error is not None and error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise error

    def _rotate(self, target: _File) -> None:
        os.fsync(target.fd)
        os.close(target.fd)
        index = 1
        while rotated_name(target.path, index).exists():
            index += 1
        os.rename(target.path, rotated_name(target.path, index))
        target.fd = os.open(target.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        target.size = 0

    def _fsync(self) -> None:
        for target in self._dirty_since_fsync:
            try:
                os.fsync(target.fd)
            except OSError as exc:
                log.warning("fsync of %s failed: %s", target.path, exc)
        self._dirty_since_fsync.clear()
        self._last_fsync = time.monotonic()
