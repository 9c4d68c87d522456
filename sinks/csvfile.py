"""CSV bridge: one wide CSV per run and kind, for people migrating from CSV logs.

Layout under ``root``: ``<run>/metrics.csv``, ``<run>/episodes.csv`` and
``_nodes/<node>/system.csv`` (the JSONL sink's layout, ``.csv`` for ``.jsonl``). Columns
are ``step, ts, node`` and then one per metric, in the order metrics first appear; a cell
is empty where a message did not carry that metric. Floats are written with ``repr`` (they
round-trip exactly; ``nan``, ``inf`` and ``-inf`` are read back as such by pandas), nested
values as JSON.

Why the file is never broken: rows are appended whole, one ``os.write`` per file per batch
(a killed sink leaves at most a torn last row, dropped on restart). When a new metric
appears the header must grow, and a CSV cannot grow a column in place, so the file is
rewritten: the old rows, padded, go to a temporary file next to it, which is fsync'd and
then ``os.replace``-d over the old one — a reader sees either the old file or the new one,
never half of either. That costs one pass over the file per new column; new metrics appear
early in a training, so in practice it happens a few times per file. ``max_columns`` bounds it.

Names come from the wire, so everything per name is bounded: open files (least recently
written closed first), and columns per file (``max_columns``; a CSV cannot drop a column,
so names past the bound are not written, counted in ``cells_refused`` and logged at most
every few seconds). A file that cannot be written is counted and logged; the other files
of the batch are still written.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bus.message import Message
from sinks._scalars import check_kinds
from sinks.jsonl_files import relative_path

log = logging.getLogger("metricbus.csv")

FIXED_COLUMNS: Final = ("step", "ts", "node")
#: A warning about one file is logged at most this often, with a count.
_REPORT_INTERVAL: Final = 10.0
# The csv module refuses to read back a cell over 128 KiB by default, which would make every
# later header rewrite of that file fail: a string value may be as large as a whole payload.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def cell(value: Any) -> Any:
    """What the csv module should write for one value.

    Scalars go through as they are: the csv module writes None as an empty cell and numbers
    with ``repr`` (exact round trip), in C, which is most of this sink's speed. Only nested
    values need turning into text (JSON).
    """
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), allow_nan=True)
    return value


def _rows_text(rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


class _CsvFile:
    """One open CSV: its columns, append descriptor and the rows of the current batch."""

    def __init__(self, path: Path, max_columns: int) -> None:
        self.path = path
        self.max_columns = max_columns
        self.columns: list[str] = list(FIXED_COLUMNS)
        self.index: dict[str, int] = {}
        self.written_columns = 0  # how many columns the header on disk has
        self.pending: list[list[Any]] = []
        self.refused = 0
        self._reported = -1e9
        self.closed = False
        self.rows_dropped = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size:
            self._adopt_existing()
        self.index = {name: i for i, name in enumerate(self.columns)}
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._drop_torn_tail()

    def _adopt_existing(self) -> None:
        # A restarted sink appends to what it wrote before: its header gives the columns.
        with self.path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header[: len(FIXED_COLUMNS)]) != FIXED_COLUMNS:
            aside = self.path.with_suffix(".foreign.csv")
            log.warning("%s does not start with %s; moved it to %s", self.path, ",".join(FIXED_COLUMNS), aside)
            os.replace(self.path, aside)
            return
        self.columns = header
        self.written_columns = len(header)

    def _drop_torn_tail(self) -> None:
        size = os.fstat(self.fd).st_size
        if size == 0:
            return
        with self.path.open("rb") as f:
            f.seek(max(0, size - 65536))
            tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        os.ftruncate(self.fd, size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail)))
        log.warning("%s: dropped a torn last row", self.path)

    def add(self, message: Message) -> None:
        index = self.index
        row: list[Any] = [None] * len(self.columns)
        row[0] = message.step
        row[1] = message.ts
        row[2] = message.node
        for key, value in message.data.items():
            i = index.get(key)
            if i is not None and i < len(FIXED_COLUMNS):  # a metric called "step" gets its own column
                key = "data/" + key
                i = index.get(key)
            if i is None:
                if len(self.columns) >= self.max_columns:
                    self._refuse(key)
                    continue
                i = index[key] = len(self.columns)
                self.columns.append(key)
                row.append(None)
            row[i] = value if type(value) is not dict and type(value) is not list else cell(value)
        self.pending.append(row)

    def _refuse(self, key: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._reported >= _REPORT_INTERVAL:
            self._reported = now
            log.warning(
                "%s: over %d columns; not writing %r (%d cells refused so far)",
                self.path, self.max_columns, key[:100], self.refused,
            )  # fmt: skip

    def write(self) -> None:
        if not self.pending and self.written_columns == len(self.columns):
            return
        width = len(self.columns)
        rows = [row + [None] * (width - len(row)) for row in self.pending]
        self.pending.clear()
        if self.written_columns == 0 and os.fstat(self.fd).st_size == 0:
            # A new, empty file has no old rows to keep whole: header and rows are appended,
            # without the temporary file and fsync a rewrite needs (a flood of new runs would
            # otherwise pay one fsync per file).
            self._append(_rows_text([self.columns, *rows]).encode(), len(rows))
            self.written_columns = width
        elif self.written_columns != width:
            self._rewrite(rows)
        else:
            self._append(_rows_text(rows).encode(), len(rows))

    def _append(self, data: bytes, rows: int) -> None:
        # A short write (disk full) would leave a torn row in the middle of the file once the
        # next batch lands: cut back to the last whole row, count the loss, let the runner report it.
        size = os.fstat(self.fd).st_size
        try:
            written, reason = os.write(self.fd, data), "short write"
        except OSError as exc:
            written, reason = -1, exc.strerror or str(exc)
        if written != len(data):
            os.ftruncate(self.fd, size)
            self.rows_dropped += rows
            raise OSError(f"{self.path}: cannot append {rows} rows ({reason}); {self.rows_dropped} rows lost so far")

    def _rewrite(self, new_rows: list[list[Any]]) -> None:
        width = len(self.columns)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with tmp.open("w", newline="") as out:
                writer = csv.writer(out, lineterminator="\n")
                writer.writerow(self.columns)
                if self.written_columns:
                    with self.path.open(newline="") as old:
                        reader = csv.reader(old)
                        next(reader, None)
                        for row in reader:
                            writer.writerow(row + [""] * (width - len(row)))
                writer.writerows(new_rows)
                out.flush()
                os.fsync(out.fileno())
        except (OSError, csv.Error):
            # the old file is untouched; only this batch's rows are lost
            tmp.unlink(missing_ok=True)
            self.rows_dropped += len(new_rows)
            raise
        os.replace(tmp, self.path)
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.written_columns = width

    def close(self) -> None:
        os.close(self.fd)
        self.closed = True


class CsvSink:
    """Writes ``kinds`` messages as rows of one wide CSV per run and kind."""

    def __init__(
        self,
        root: str = "csv",
        kinds: Sequence[str] = ("metrics", "episode", "system"),
        max_columns: int = 2000,
        max_open_files: int = 128,
    ) -> None:
        self.root = Path(root)
        self.kinds = check_kinds(kinds, "csv")
        self.max_columns = max_columns
        self.max_open_files = max(1, max_open_files)
        self.rows_written = 0
        self.write_errors = 0
        self.files_closed = 0
        self._reported = -1e9
        self._files: OrderedDict[Path, _CsvFile] = OrderedDict()
        self._paths: dict[tuple[str, str | None, str], Path] = {}
        self.root.mkdir(parents=True, exist_ok=True)

    def handle(self, batch: Sequence[Message]) -> None:
        touched: dict[Path, _CsvFile] = {}
        paths = self._paths
        for message in batch:
            if message.kind not in self.kinds:
                continue
            source = (message.kind, message.run, message.node)
            path = paths.get(source)
            if path is None:  # building a Path per message would cost more than writing the row
                if len(paths) > 4 * self.max_open_files:
                    paths.clear()
                path = paths[source] = self.root / relative_path(message).with_suffix(".csv")
            target = touched.get(path)
            if target is None or target.closed:
                try:
                    target = touched[path] = self._open(path)
                except OSError as exc:
                    self._failed(exc)
                    continue
            target.add(message)
            self.rows_written += 1
        for target in touched.values():
            if not target.closed:  # one evicted mid-batch wrote its rows when it was closed
                self._write(target)

    def flush(self) -> None:
        pass  # every batch reaches the OS at its end

    def stats(self) -> dict[str, int]:
        """Counters and the sizes of the per-name state (logged by the runner when it stops)."""
        return {
            "rows_written": self.rows_written,
            "rows_dropped": sum(t.rows_dropped for t in self._files.values()),
            "write_errors": self.write_errors,
            "open_files": len(self._files),
            "files_closed": self.files_closed,
            "cells_refused": sum(t.refused for t in self._files.values()),
        }

    def close(self) -> None:
        for target in self._files.values():
            self._write(target)
            target.close()
        self._files.clear()

    def _write(self, target: _CsvFile) -> None:
        """Write one file's rows; a failure is counted and logged, and the other files go on."""
        try:
            target.write()
        except (OSError, csv.Error) as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.write_errors += 1
        now = time.monotonic()
        if now - self._reported >= _REPORT_INTERVAL:
            self._reported = now
            log.error("csv: %s (%d write errors so far; other files go on)", exc, self.write_errors)

    def _open(self, path: Path) -> _CsvFile:
        target = self._files.get(path)
        if target is not None:
            self._files.move_to_end(path)
            return target
        if len(self._files) >= self.max_open_files:
            _, oldest = self._files.popitem(last=False)
            self._write(oldest)
            oldest.close()
            self.files_closed += 1
        target = self._files[path] = _CsvFile(path, self.max_columns)
        return target
