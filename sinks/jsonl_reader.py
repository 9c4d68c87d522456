"""Reading what the JSONL sink wrote: stream a run's records, or follow a file like ``tail -f``.

A torn final line (a writer killed mid-line) is skipped; in follow mode it is waited for
until it is complete. A complete line that is not JSON is skipped and counted.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sinks.jsonl import FILE_NAMES, NODES_DIR, safe_name

_ROTATED: Final = re.compile(r"^(?P<stem>.+)\.(?P<index>\d{6})\.jsonl$")
Record = dict[str, Any]


@dataclass
class ReadStats:
    lines: int = 0
    bad_lines: int = 0
    torn_tail: bool = False


def kind_file(kind: str) -> str:
    """The file stem for a message kind (``episode`` -> ``episodes``); a stem passes through."""
    return FILE_NAMES.get(kind, kind)


def files_of(directory: str | os.PathLike[str], stem: str) -> list[Path]:
    """``stem``'s rotated files, oldest first, then the current one (if present)."""
    directory = Path(directory)
    rotated = []
    for path in directory.glob(f"{stem}.*.jsonl"):
        match = _ROTATED.match(path.name)
        if match and match["stem"] == stem:
            rotated.append((int(match["index"]), path))
    files = [p for _, p in sorted(rotated)]
    current = directory / f"{stem}.jsonl"
    if current.exists():
        files.append(current)
    return files


def read_file(path: str | os.PathLike[str], stats: ReadStats | None = None) -> Iterator[Record]:
    """Records of one file; skips a torn last line and (counting them) non-JSON lines."""
    stats = stats if stats is not None else ReadStats()
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                stats.torn_tail = True  # only the last line can lack its newline
                break
            record = _parse(raw, stats)
            if record is not None:
                yield record


def _parse(raw: bytes, stats: ReadStats) -> Record | None:
    stats.lines += 1
    try:
        record = json.loads(raw)
    except ValueError:
        stats.bad_lines += 1
        return None
    if not isinstance(record, dict):
        stats.bad_lines += 1
        return None
    return record


def read_records(
    directory: str | os.PathLike[str], kinds: Iterable[str] | None = None, stats: ReadStats | None = None
) -> Iterator[Record]:
    """Every record of a run (or node) directory; file by file, each in write order.

    ``kinds`` are message kinds or file stems (``metrics``, ``episode``/``episodes``, …);
    None means all of them.
    """
    stems = sorted({kind_file(k) for k in kinds}) if kinds is not None else sorted(set(FILE_NAMES.values()))
    for stem in stems:
        for path in files_of(directory, stem):
            yield from read_file(path, stats)


def run_dir(root: str | os.PathLike[str], run: str) -> Path:
    return Path(root) / safe_name(run)


def node_dir(root: str | os.PathLike[str], node: str) -> Path:
    return Path(root) / NODES_DIR / safe_name(node)


def list_runs(root: str | os.PathLike[str]) -> list[str]:
    """Run directories under ``root`` (those holding at least one ``.jsonl`` file)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != NODES_DIR and any(p.glob("*.jsonl")))


def list_nodes(root: str | os.PathLike[str]) -> list[str]:
    nodes = Path(root) / NODES_DIR
    return sorted(p.name for p in nodes.iterdir() if p.is_dir()) if nodes.is_dir() else []


def follow(
    path: str | os.PathLike[str],
    *,
    from_start: bool = True,
    poll_interval: float = 0.1,
    stop: threading.Event | None = None,
    idle_timeout: float | None = None,
) -> Iterator[Record]:
    """Records of ``path`` as they are appended, across rotations, like ``tail -F``.

    Ends when ``stop`` is set or, with ``idle_timeout``, after that long without new data.
    """
    path = Path(path)
    stats = ReadStats()
    handle = None
    inode = None
    buffer = b""
    last_data = time.monotonic()
    try:
        while stop is None or not stop.is_set():
            if handle is None:
                try:
                    handle = open(path, "rb")  # noqa: SIM115 - kept open across iterations
                except FileNotFoundError:
                    handle = None
                else:
                    inode = os.fstat(handle.fileno()).st_ino
                    if not from_start:
                        handle.seek(0, os.SEEK_END)
            chunk = handle.read() if handle is not None else b""
            if chunk:
                last_data = time.monotonic()
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    record = _parse(raw + b"\n", stats)
                    if record is not None:
                        yield record
                continue
            if handle is not None and _replaced(path, inode):
                # rotated or recreated: the old file is fully read, move to the new one
                handle.close()
                handle, buffer, from_start = None, b"", True
                continue
            if idle_timeout is not None and time.monotonic() - last_data >= idle_timeout:
                return
            time.sleep(poll_interval)  # files give no change notification portable enough to rely on
    finally:
        if handle is not None:
            handle.close()


def _replaced(path: Path, inode: int | None) -> bool:
    try:
        return os.stat(path).st_ino != inode
    except FileNotFoundError:
        return False
