"""The JSONL file contract, in one place: where each message goes, how files are named and
rotated, and how they are read back (streamed, tail-read, followed like ``tail -F``).

Layout under a root: ``<run>/metrics.jsonl``, ``<run>/episodes.jsonl``, ``<run>/events.jsonl``,
``<run>/alerts.jsonl``, ``<run>/bus.jsonl`` (gaps), and for node-scoped messages
``_nodes/<node>/system.jsonl`` (and ``alerts``, ``bus``). Rotated files are
``metrics.000001.jsonl``, ``metrics.000002.jsonl``, … (oldest first); the unnumbered file is
always the newest. A line is the message payload as JSON.

The JSONL sink (:mod:`sinks.jsonl`) writes by these rules; the CSV and TensorBoard sinks
mirror the layout, and the dashboard's history, the alert engine's restore, ``metricbus
report`` and ``metricbus replay`` read through this module. Reading skips a torn final line
(a writer killed mid-line; in follow mode it is waited for until complete); a complete line
that is not JSON is skipped and counted.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from bus.message import DecodeError, Message, from_record

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
#: Bytes read from the end of a file for a quick look at how it ends (:func:`tail_records`).
TAIL_BYTES: Final = 256 * 1024
_ROTATED: Final = re.compile(r"^(?P<stem>.+)\.(?P<index>\d{6})\.jsonl$")
Record = dict[str, Any]


# -- layout and names ----------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """A file-system-safe directory name for a run or node."""
    cleaned = _UNSAFE.sub("_", name) or "_"
    return "_" if cleaned in (".", "..") else cleaned


def relative_path(message: Message) -> Path:
    """Where ``message`` goes, relative to the root."""
    file = FILE_NAMES[message.kind] + ".jsonl"
    if not message.of_node:
        return Path(safe_name(message.owner)) / file
    return Path(NODES_DIR) / safe_name(message.node) / file


def rotated_name(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}.{index:06d}{path.suffix}")


def rotation_index(candidate: Path, current: Path) -> int:
    """The index of ``candidate`` if it is a rotated file of ``current``, else 0."""
    name, stem = candidate.name, current.stem + "."
    middle = name[len(stem) : -len(current.suffix)] if name.startswith(stem) and name.endswith(current.suffix) else ""
    return int(middle) if len(middle) == 6 and middle.isdigit() else 0


def is_rotated(path: Path) -> bool:
    """True for a rotated file (``metrics.000001.jsonl``), False for a current one."""
    return _ROTATED.match(path.name) is not None


# -- reading -------------------------------------------------------------------------------------


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


def current_files(root: str | os.PathLike[str], kind: str) -> list[Path]:
    """The current (unrotated) file of ``kind`` in every run and node directory under ``root``."""
    name = f"{kind_file(kind)}.jsonl"
    root = Path(root)
    return sorted(root.glob(f"*/{name}")) + sorted(root.glob(f"{NODES_DIR}/*/{name}"))


def list_runs(root: str | os.PathLike[str]) -> list[str]:
    """Run directories under ``root`` (those holding at least one ``.jsonl`` file)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != NODES_DIR and any(p.glob("*.jsonl")))


def list_nodes(root: str | os.PathLike[str]) -> list[str]:
    nodes = Path(root) / NODES_DIR
    return sorted(p.name for p in nodes.iterdir() if p.is_dir()) if nodes.is_dir() else []


def tail_records(path: str | os.PathLike[str], max_bytes: int = TAIL_BYTES) -> list[Record]:
    """The whole records among the last ``max_bytes`` of a file (none if it cannot be read).

    For a quick look at where a file ended (last seq per publisher, last alert per series)
    without reading a large file whole; the first line of the window is cut, so it is dropped.
    """
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            tail = f.read()
    except OSError:
        return []
    lines = tail.split(b"\n")
    if len(tail) >= max_bytes:
        lines = lines[1:]
    stats = ReadStats()
    return [r for r in (_parse(raw, stats) for raw in lines if raw.strip()) if r is not None]


def message_of(record: Mapping[str, Any]) -> Message | None:
    """A record as a :class:`~bus.message.Message`, checked as strictly as the wire; None if it is not one."""
    try:
        return from_record(record)
    except DecodeError:
        return None


# -- following -------------------------------------------------------------------------------------


def follow(
    path: str | os.PathLike[str],
    *,
    from_start: bool = True,
    poll_interval: float = 0.1,
    stop: threading.Event | None = None,
    idle_timeout: float | None = None,
) -> Iterator[Record]:
    """Records of ``path`` as they are appended, across rotations, like ``tail -F``.

    ``from_start=False`` skips what the file holds when ``follow`` is called (not when the
    iteration starts); a file that does not exist yet is read from its start. When the file
    is rotated away, the rest of it is read, then every file rotated after it (the writer
    may rotate several times between two looks), then the new current file: no record is
    skipped or read twice. Ends when ``stop`` is set or, with ``idle_timeout``, after that
    long without new data.
    """
    path = Path(path)
    skip_to: tuple[int, int] | None = None  # (inode, offset) of the history to skip
    if not from_start:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            pass
        else:
            skip_to = (st.st_ino, st.st_size)
    return _follow(path, skip_to, poll_interval, stop, idle_timeout)


def _follow(
    path: Path,
    skip_to: tuple[int, int] | None,
    poll_interval: float,
    stop: threading.Event | None,
    idle_timeout: float | None,
) -> Iterator[Record]:
    stats = ReadStats()
    handle: BinaryIO | None = None
    inode: int | None = None
    buffer = b""
    last_data = time.monotonic()
    try:
        while stop is None or not stop.is_set():
            if handle is None and inode is not None:
                # after a rotation whose new file did not exist yet: find what follows our last file
                handle, buffer = _open_successor(path, inode)
                if handle is not None:
                    inode = os.fstat(handle.fileno()).st_ino
            elif handle is None:
                try:
                    handle = open(path, "rb")  # noqa: SIM115 - kept open across iterations
                except FileNotFoundError:
                    pass
                else:
                    inode = os.fstat(handle.fileno()).st_ino
                    if skip_to is not None and skip_to[0] == inode:
                        handle.seek(skip_to[1])
                    skip_to = None
            chunk = handle.read() if handle is not None else b""
            if chunk:
                last_data = time.monotonic()
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                yield from _parse_all(complete, stats)
                continue
            if handle is not None and inode is not None and _current_inode(path) not in (inode, None):
                # Rotated (or recreated). The writer may have appended between our last read
                # and the rename, so read to the end; the file is final from here on.
                *complete, _torn = (buffer + handle.read()).split(b"\n")
                yield from _parse_all(complete, stats)
                handle.close()
                handle, buffer = _open_successor(path, inode)
                if handle is not None:
                    inode = os.fstat(handle.fileno()).st_ino
                continue
            if idle_timeout is not None and time.monotonic() - last_data >= idle_timeout:
                return
            time.sleep(poll_interval)  # files give no change notification portable enough to rely on
    finally:
        if handle is not None:
            handle.close()


def _parse_all(lines: list[bytes], stats: ReadStats) -> Iterator[Record]:
    for raw in lines:
        record = _parse(raw + b"\n", stats)
        if record is not None:
            yield record


def _current_inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None  # between a rotation's rename and the new file's creation


def _open_successor(path: Path, finished: int) -> tuple[BinaryIO | None, bytes]:
    """The file written after the one with inode ``finished``: the next rotated one, else the current one."""
    while True:
        chain = _chain(path)
        inodes = [ino for ino, _ in chain]
        # Not in the chain: the file was deleted or truncated-and-recreated, not rotated.
        nxt = inodes.index(finished) + 1 if finished in inodes else len(chain) - 1
        if not 0 <= nxt < len(chain):
            return None, b""  # the new current file does not exist yet; the caller comes back
        inode, name = chain[nxt]
        try:
            handle = open(name, "rb")  # noqa: SIM115 - handed to the caller
        except FileNotFoundError:
            continue
        if os.fstat(handle.fileno()).st_ino == inode:
            return handle, b""
        handle.close()  # the name now holds another file (rotated since we looked): look again


def _chain(path: Path) -> list[tuple[int, Path]]:
    """(inode, name) of ``path``'s files, oldest first, from a listing no rotation interrupted.

    The current file is looked at before the rotated ones, so a rotation in between shows
    it twice (kept once, under its rotated name) rather than not at all; and since a
    directory listing taken during a rename may miss the renamed file, a listing counts
    only once a second one agrees with it.
    """
    previous: list[tuple[int, Path]] | None = None
    while True:
        current = _current_inode(path)
        chain: list[tuple[int, Path]] = []
        for name in files_of(path.parent, path.stem):
            inode = _current_inode(name)
            if name != path and inode is not None and inode not in (i for i, _ in chain):
                chain.append((inode, name))
        if current is not None and current not in (i for i, _ in chain):
            chain.append((current, path))
        if chain == previous:
            return chain
        previous = chain
