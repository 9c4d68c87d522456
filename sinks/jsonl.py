"""JSON Lines persistence: one file per run and kind, whole-line appends, size rotation.

The layout, file names and rotation scheme are :mod:`sinks.jsonl_files` (which also reads
the files back). A line is the message payload as JSON; NaN and ±Inf are written as
Python's ``NaN``/``Infinity`` tokens, which ``json``, pandas and DuckDB read back.

Why lines are buffered and written with one ``os.write`` per file: a write of whole lines
either lands or not, so a killed sink leaves at most one torn final line, and a short
write (disk full) is undone with ``ftruncate`` so no corrupt line is ever left behind.
fsync runs on its own thread (a slow disk must not stall the loop and every line's
latency), and idle files are closed so a sink that lives through many runs stays within
its descriptor limit.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bus.bounded import Memo
from bus.message import Message
from bus.subscriber import SinkContext
from sinks.disk_alarm import WriteAlarm
from sinks.jsonl_files import is_rotated, relative_path, rotated_name, rotation_index, tail_records
from sinks.jsonl_lines import encode_lines

log = logging.getLogger("metricbus.jsonl")

#: Bytes read from the end of each file on start to recover the last seq per publisher.
_TAIL_BYTES: Final = 256 * 1024
#: Cached files per (kind, run, node); past this the least recently seen are forgotten.
_MAX_ROUTES: Final = 65536
#: last_seen() reads only files written this recently (a restart after a crash is sooner).
_RECENT_SECONDS: Final = 3600.0
#: Descriptors the sink keeps open at most; idle files are closed and reopened on demand.
_MAX_OPEN: Final = 128
#: Closed files waiting for the fsync thread; past this they are handed over at once.
_MAX_CLOSED_DIRTY: Final = 1024
#: Files remembered (closed ones cost a little memory each); past this, idle ones are forgotten.
_MAX_FILES: Final = 4096
#: Errors that say the disk (not this one file) is in trouble: keep the lines, raise the alarm.
_DISK_ERRORS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
#: Errors no retry can fix for this path (a name the file system refuses): drop its lines.
_PATH_ERRORS: Final = frozenset(
    {errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EINVAL, errno.ELOOP, errno.EEXIST, errno.EROFS}
)
#: A failing file is logged at most this often (with a count), not once per batch.
_REPORT_INTERVAL: Final = 10.0


class _File:
    """One JSONL file with its pending whole lines; ``fd`` is -1 while it is closed for lack of use."""

    __slots__ = ("chunks", "count", "fd", "path", "pending_bytes", "size")

    def __init__(self, path: Path) -> None:
        # Opened at its first write, where a failure (disk full) keeps the lines for a retry.
        self.path = path
        self.fd = -1
        self.size = 0
        # Pending text as the encoder made it, a batch's share per chunk: whole lines, newlines
        # included, never split into single lines but to drop some (a failing disk).
        self.chunks: list[bytes] = []
        self.count = 0  # lines in chunks
        self.pending_bytes = 0

    def drop_oldest(self, keep_bytes: int) -> int:
        """Drop the oldest pending lines until at most ``keep_bytes`` are left; returns how many."""
        lines = b"".join(self.chunks).splitlines(keepends=True)  # JSON text escapes \n and \r
        size = sum(map(len, lines))
        dropped = 0
        while size > keep_bytes and dropped < len(lines):
            size -= len(lines[dropped])
            dropped += 1
        rest = lines[dropped:]
        self.chunks = [b"".join(rest)] if rest else []
        self.count = len(rest)
        self.pending_bytes = size
        return dropped

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Read access too: a torn tail left by a killed writer is found by reading the end.
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = _drop_torn_tail(self.fd)


def _drop_torn_tail(fd: int) -> int:
    """Truncate a partial last line left by a killed writer; returns the file size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    # Walk back chunk by chunk: a torn line may be longer than one chunk (payloads up to 1 MiB).
    end = size
    new_size = 0
    while end > 0:
        start = max(0, end - _TAIL_BYTES)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            new_size = start + cut + 1
            break
        end = start
    os.ftruncate(fd, new_size)
    log.warning("dropped a torn last line (%d bytes) at the end of a file", size - new_size)
    return new_size


def _fsync_and_close(fd: int, path: Path) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        log.warning("fsync of %s failed: %s", path, exc)
    finally:
        os.close(fd)


class _Syncer:
    """Runs fsync on a thread of its own; one round at a time, a request during one is declined.

    Each round works on duplicated descriptors, so a file rotated or closed meanwhile is
    still flushed and no descriptor number is ever reused under it.
    """

    def __init__(self) -> None:
        self._work: list[tuple[int, Path]] | None = None
        self._busy = False
        self._closing = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None  # started on the first request

    def request(self, files: list[tuple[int, Path]]) -> bool:
        with self._cond:
            if self._busy or self._work is not None or self._closing:
                return False
            # fd -1: a file closed since it was written; the thread opens it by path to sync it
            self._work = [(os.dup(fd) if fd >= 0 else -1, path) for fd, path in files]
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="jsonl-fsync", daemon=True)
                self._thread.start()
            self._cond.notify()
            return True

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._work is None and not self._closing:
                    self._cond.wait()
                work, self._work = self._work, None
                if work is None:
                    return
                self._busy = True
            for fd, path in work:
                try:
                    if fd < 0:
                        fd = os.open(path, os.O_RDONLY)
                    os.fsync(fd)  # a descriptor of the same file syncs its data, whoever wrote it
                except OSError as exc:
                    log.warning("fsync of %s failed: %s", path, exc)
                finally:
                    if fd >= 0:
                        os.close(fd)
            with self._cond:
                self._busy = False


class JsonlSink:
    """Writes every message it is given as one JSON line; see the module docstring."""

    def __init__(
        self,
        root: str = "logs",
        fsync_interval: float = 1.0,
        rotate_bytes: int = 256 * 1024 * 1024,
        max_pending_bytes: int = 64 * 1024 * 1024,
        context: SinkContext | None = None,
    ) -> None:
        self.root = Path(root)
        self.fsync_interval = fsync_interval
        self.rotate_bytes = rotate_bytes
        self.max_pending_bytes = max_pending_bytes
        self.lines_written = 0
        self.lines_dropped = 0
        self.write_errors = 0
        self.files_forgotten = 0
        self.fsync_skipped = 0
        self._reported: dict[int, float] = {}  # errno -> when last logged
        self._files: dict[Path, _File] = {}
        #: (kind, run, node) -> its file; a flood of new names ages out the flood, not the live runs
        self._routes: Memo[tuple[str, str | None, str], _File] = Memo(_MAX_ROUTES)
        self._last_fsync = time.monotonic()
        self._dirty_since_fsync: set[_File] = set()
        #: files closed for lack of use before their fsync was due (the fsync thread reopens them)
        self._closed_dirty: list[tuple[int, Path]] = []
        self._syncer = _Syncer()
        #: Files with a descriptor, least recently written first (bounded by ``_MAX_OPEN``).
        self._open_files: dict[_File, None] = {}
        # Run by `metricbus sink`, a write failure (disk full) is also an alert on the bus.
        self._alarm = WriteAlarm(context)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- Sink protocol ----------------------------------------------------------------------

    def handle(self, batch: Sequence[Message]) -> None:
        # Lines reach the OS at the end of every batch (latency: a line is readable within
        # one batch of its arrival); fsync, the expensive part, runs on its own interval.
        # This loop is the sink's per-message cost: it only sorts messages by file; each
        # file's share is then made into text by one encoder call (sinks/jsonl_lines.py).
        # A batch is mostly runs of one source's messages: the route is looked up only where
        # (kind, run, node) changes from the message before (three compares, no hashing).
        routes = self._routes
        groups: dict[_File, list[Message]] = {}
        group: list[Message] = []
        kind, node = "", ""  # no message's: the first one looks its route up
        run: str | None = ""
        for message in batch:
            if message.run == run and message.node == node and message.kind == kind:
                group.append(message)
                continue
            kind, run, node = message.kind, message.run, message.node
            key = (kind, run, node)
            target = routes.hot.get(key) or routes.get(key) or self._route(message)
            found = groups.get(target)
            if found is None:
                group = groups[target] = [message]
            else:
                group = found
                group.append(message)
        touched: list[_File] = []
        for target, group in groups.items():
            if not target.chunks:  # else a failed write's lines wait: flush retries them, not every batch
                touched.append(target)
            target.chunks.append(encode_lines(group))
            target.count += len(group)
        for target in touched:
            self._write(target)

    def flush(self) -> None:
        for target in list(self._files.values()):  # lines wait only where a write failed
            if target.chunks:
                self._write(target)
        due = time.monotonic() - self._last_fsync >= self.fsync_interval and (
            self._dirty_since_fsync or self._closed_dirty
        )
        # in the background: a slow disk must not stall the loop (and every line's latency)
        if due and self._syncer.request([(t.fd, t.path) for t in self._dirty_since_fsync] + self._closed_dirty):
            self._dirty_since_fsync.clear()
            self._closed_dirty.clear()
            self._last_fsync = time.monotonic()

    def stats(self) -> dict[str, int]:
        """Counters and the sizes of the per-name state (logged by the runner when it stops)."""
        return {
            "lines_written": self.lines_written,
            "lines_dropped": self.lines_dropped,
            "write_errors": self.write_errors,
            "files": len(self._files),
            "files_forgotten": self.files_forgotten,
            "fsync_skipped": self.fsync_skipped,
            "routes": len(self._routes),
            "routes_evicted": self._routes.evicted,
        }

    def close(self) -> None:
        self.flush()
        self._syncer.close()
        self._fsync()
        for target in self._open_files:
            os.close(target.fd)
            target.fd = -1
        self._open_files.clear()
        self._files.clear()
        self._routes.clear()
        self._alarm.close()

    # -- recovery after a restart ------------------------------------------------------------

    def last_seen(self) -> dict[str, int]:
        """Last seq per publisher found at the end of the current files (for gap detection)."""
        last: dict[str, int] = {}
        recent = time.time() - _RECENT_SECONDS
        for path in self.root.glob("**/*.jsonl"):
            if is_rotated(path):
                continue
            try:
                if path.stat().st_mtime < recent:
                    continue  # an old run: its publishers are gone, and reading it would slow every start
            except OSError:
                continue
            for record in tail_records(path, _TAIL_BYTES):
                pub, seq = record.get("pub"), record.get("seq")
                if isinstance(pub, str) and isinstance(seq, int) and seq > last.get(pub, -1):
                    last[pub] = seq
        return last

    # -- internals ---------------------------------------------------------------------------

    def _route(self, message: Message) -> _File:
        return self._routes.put((message.kind, message.run, message.node), self._open(relative_path(message)))

    def _open(self, relative: Path) -> _File:
        path = self.root / relative
        target = self._files.get(path)
        if target is None:
            if len(self._files) >= _MAX_FILES:
                self._forget_idle_files()
            target = self._files[path] = _File(path)
        return target

    def _forget_idle_files(self) -> None:
        """Drop closed files with nothing pending: a sink that has seen a million runs keeps few.

        The routes to them go too (a route must not keep a forgotten file); the others stay.
        """
        idle = {p for p, t in self._files.items() if t.fd < 0 and not t.chunks}
        for path in idle:
            del self._files[path]
        for key, target in self._routes.items():
            if target.path in idle:
                self._routes.pop(key)
        self.files_forgotten += len(idle)

    def _make_room(self) -> None:
        """Close the least recently written files beyond the bound (they reopen when written).

        A long-lived sink sees run after run, and every run and kind is a file: keeping all
        of them open would end in EMFILE.
        """
        for target in list(self._open_files):
            if len(self._open_files) < _MAX_OPEN:
                return
            if target.chunks:
                continue  # about to be written in this batch
            if target in self._dirty_since_fsync:
                # fsync'd with the others on the syncer's next round, not here: a flood of new
                # runs would otherwise pay one synchronous fsync per file it opens
                self._dirty_since_fsync.discard(target)
                self._closed_dirty.append((-1, target.path))
                if len(self._closed_dirty) > _MAX_CLOSED_DIRTY:
                    if self._syncer.request(self._closed_dirty):
                        self._closed_dirty.clear()
                    else:
                        # More new files than the disk syncs (a flood of run ids): an fsync here
                        # per file would stall every run's lines behind it. Forget the oldest
                        # (the kernel writes it back within its dirty-writeback time).
                        self._closed_dirty.pop(0)
                        self.fsync_skipped += 1
            os.close(target.fd)
            target.fd = -1
            del self._open_files[target]

    def _write(self, target: _File) -> None:
        chunks = target.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        written = 0
        error: OSError | None = None
        try:
            if target.fd < 0:
                self._make_room()
                target.open()
            # most recently written last: the next file to close is the first
            self._open_files.pop(target, None)
            self._open_files[target] = None
            if target.size and target.size + len(data) > self.rotate_bytes:
                self._rotate(target)
            written = os.write(target.fd, data)
        except OSError as exc:
            error = exc
        if written == len(data):
            target.size += written
            self.lines_written += target.count
            chunks.clear()
            target.count = 0
            target.pending_bytes = 0
            self._dirty_since_fsync.add(target)
            if self._alarm.firing:
                self._alarm.recovered(str(target.path), self.lines_dropped)
            return
        # Short write or error (disk full): undo the partial write so no torn line remains,
        # keep the lines for the next flush, and drop the oldest only past the bound.
        if written:
            os.ftruncate(target.fd, target.size)
        self.write_errors += 1
        reason = errno.errorcode.get(error.errno or 0, str(error)) if error else "short write"
        if error is not None and error.errno not in _DISK_ERRORS:
            # This file only (a name the file system refuses, a permission): the other files
            # go on, and the disk alarm stays for the disk.
            self._file_failed(target, error, reason)
            return
        target.pending_bytes = len(data)
        if target.pending_bytes > self.max_pending_bytes:
            self.lines_dropped += target.drop_oldest(self.max_pending_bytes)
        # Logged and alerted once per streak: retried every batch, it would flood the log.
        self._alarm.failed(str(target.path), reason, target.count, self.lines_dropped)

    def _file_failed(self, target: _File, error: OSError, reason: str) -> None:
        if error.errno in _PATH_ERRORS:
            dropped = target.count  # no retry can write this path
            target.chunks.clear()
            target.count = 0
            target.pending_bytes = 0
        else:
            # maybe passing (EMFILE, EACCES fixed by hand): keep a bounded share for a retry
            target.pending_bytes = sum(map(len, target.chunks))
            dropped = 0
            if target.pending_bytes > self.max_pending_bytes // 16:
                dropped = target.drop_oldest(self.max_pending_bytes // 16)
        self.lines_dropped += dropped
        now = time.monotonic()
        code = error.errno or 0
        if now - self._reported.get(code, -1e9) >= _REPORT_INTERVAL:
            self._reported[code] = now
            log.error(
                "cannot write %s (%s: %s); %d lines dropped so far, other files go on",
                str(target.path)[:300], reason, error.strerror, self.lines_dropped,
            )  # fmt: skip

    def _rotate(self, target: _File) -> None:
        os.fsync(target.fd)
        os.close(target.fd)
        del self._open_files[target]
        self._dirty_since_fsync.discard(target)
        target.fd = -1  # a failure below leaves the file closed; the next write reopens it
        # One past the highest index, not the first free one: a deleted old file must not
        # make the next rotation sort before newer ones.
        index = 1 + max((rotation_index(p, target.path) for p in target.path.parent.iterdir()), default=0)
        os.rename(target.path, rotated_name(target.path, index))
        target.open()
        self._open_files[target] = None

    def _fsync(self) -> None:
        for _, path in self._closed_dirty:
            try:
                _fsync_and_close(os.open(path, os.O_RDONLY), path)
            except OSError as exc:
                log.warning("fsync of %s failed: %s", path, exc)
        self._closed_dirty.clear()
        for target in self._dirty_since_fsync:
            try:
                os.fsync(target.fd)
            except OSError as exc:
                log.warning("fsync of %s failed: %s", target.path, exc)
        self._dirty_since_fsync.clear()
        self._last_fsync = time.monotonic()
