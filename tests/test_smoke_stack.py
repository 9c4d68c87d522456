"""The stack starts, carries one message end to end, and stops."""

from __future__ import annotations

from support import Stack, wait_until

from bus.publisher import Publisher


def test_first_message_of_a_new_publisher_is_recorded(stack: Stack) -> None:
    """A publisher used right after construction loses nothing (slow joiner solved)."""
    with Publisher(stack.frontend, run="smoke") as pub:
        pub.metrics({"loss": 1.5}, step=0)
    rows = wait_until(lambda: stack.records("smoke", "metrics"), 10, "the metrics line")
    assert rows[0]["data"] == {"loss": 1.5}
    assert rows[0]["seq"] == 0
