"""A sink that stops reading, for the fault tests; importable as ``fault_sinks:StallingSink``."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from bus.message import Message


class StallingSink:
    """Blocks in its first ``handle`` until ``release`` exists; then appends what it got to ``record``.

    Each line of ``record`` is ``{"pub", "seq", "kind"}`` for a message, or the ``gap`` note's
    data for a gap the runner reported, so a test can add up what arrived and what was lost.
    """

    def __init__(self, record: str, release: str) -> None:
        self.release = Path(release)
        self._file = Path(record).open("a")  # noqa: SIM115 -- open for the sink's whole life, closed in close()

    def handle(self, batch: Sequence[Message]) -> None:
        while not self.release.exists():
            time.sleep(0.05)  # the misbehaviour under test: a sink stuck (a hung disk, a deadlock)
        lines = []
        for m in batch:
            if m.kind == "bus" and m.data.get("event") == "gap":
                lines.append(json.dumps({"gap": m.data}))
            elif m.kind != "bus":
                lines.append(json.dumps({"pub": m.pub, "seq": m.seq, "kind": m.kind}))
        self._file.write("".join(line + "\n" for line in lines))
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
