"""Re-judge recorded runs with a rules file, in process: the quick loop for tuning rules.

    .venv/bin/python bench/alert_replay.py LOGS_ROOT [--rules FILE] [--run SUBSTRING]

Feeds every record of each run under a JSONL root (as ``bench/alert_suite.py --keep DIR``
leaves them, in ``DIR/logs``) to an :class:`~alerts.engine.AlertEngine` in time order and
prints the alerts it fires. Absence rules need live time and are not judged here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from alerts.engine import AlertEngine  # noqa: E402  (after the path tweak)
from sinks.jsonl_files import list_runs, message_of, read_records, run_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--rules", type=Path, default=REPO / "configs" / "alerts.yaml")
    parser.add_argument("--run", default="")
    args = parser.parse_args(argv)
    for run in list_runs(args.root):
        if args.run not in run:
            continue
        engine = AlertEngine(rules=str(args.rules), restore=False)
        records = sorted(read_records(run_dir(args.root, run)), key=lambda r: (r["ts"], r.get("seq", 0)))
        fault = next((r for r in records if r["data"].get("event") == "fault_injected"), None)
        messages = [message_of(r) for r in records if r["kind"] != "alert"]
        engine.handle([m for m in messages if m is not None])
        engine.close()
        fired = [a for a in engine.recent if a["data"]["state"] == "firing"]
        at = f" (fault at step {fault['step']})" if fault else ""
        print(f"{run}{at}: {len(fired)} firing")
        for a in fired:
            print(f"   step {a['step']}: [{a['data']['severity']}] {a['data']['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
