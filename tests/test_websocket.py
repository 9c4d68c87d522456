"""The ``websocket`` sink with a real ``websockets`` client: subscribe, snapshot, live
messages, NaN round trip, filter changes, back-pressure, origin and token checks, and a
restart under ``metricbus up``.

Most tests run the sink in-process (its real server thread, real sockets) and feed it
batches as the runner would; one runs it as a process of a real stack.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Stack, free_port, wait_until

from bus.message import Message
from bus.publisher import Publisher

pytest.importorskip("websockets", reason="the websocket sink needs the websocket extra")
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from sinks.websocket import WebSocketSink

_seq = iter(range(10**9))


def msg(kind: str, run: str | None, data: dict[str, Any], *, node: str = "n1", step: int | None = None) -> Message:
    return Message(kind, run, node, "pub-t", next(_seq), time.time(), step, data)


def strict_loads(text: str | bytes) -> Any:
    """JSON as a browser's JSON.parse reads it: bare NaN/Infinity tokens are an error."""

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


class Client:
    """A real websockets client that reads frames into a list on a thread of its own."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._exit = contextlib.ExitStack()
        self.ws: ClientConnection = self._exit.enter_context(connect(url, open_timeout=10, **kwargs))
        self.frames: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                self.frames.append(strict_loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def subscribe(self, **fields: Any) -> None:
        self.ws.send(json.dumps({"type": "subscribe", **fields}))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in list(self.frames) if f["type"] == kind]

    def messages(self) -> list[dict[str, Any]]:
        return [m for f in self.of_type("messages") for m in f["messages"]]

    def wait_frame(self, kind: str, count: int = 1, timeout: float = 10.0) -> dict[str, Any]:
        wait_until(lambda: len(self.of_type(kind)) >= count, timeout, f"{count} {kind} frame(s)")
        return self.of_type(kind)[count - 1]

    def close(self) -> None:
        self._exit.close()
        self._thread.join(timeout=5)


@pytest.fixture
def sink() -> Iterator[WebSocketSink]:
    s = WebSocketSink(port=0)
    yield s
    s.close()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def test_snapshot_on_subscribe_then_live_messages_in_order(sink: WebSocketSink, clients: list[Client]) -> None:
    """A subscriber first gets runs with status, the latest value per metric and firing alerts, then live messages."""
    sink.handle(
        [
            msg("event", "ppo-1", {"event": "run_started"}),
            msg("metrics", "ppo-1", {"train/loss": 0.9, "cfg": {"nested": 1}}, step=10),
            msg("metrics", "ppo-1", {"train/loss": 0.5}, step=20),
            msg("event", "ppo-2", {"event": "run_ended", "status": "failed", "error": "boom"}),
            msg("system", None, {"cpu/percent": 12.5}, node="gpu-3"),
            msg("alert", "ppo-1", {"rule": "nan", "state": "firing", "metric": "train/loss", "severity": "error"}),
            msg("alert", "ppo-1", {"rule": "old", "state": "firing", "metric": "x", "severity": "info"}),
            msg("alert", "ppo-1", {"rule": "old", "state": "resolved", "metric": "x", "severity": "info"}),
        ]
    )
    c = Client(sink.url)
    clients.append(c)
    c.subscribe()
    snap = c.wait_frame("snapshot")
    assert snap["subscription"] == {"topics": [""], "run": None}
    assert snap["runs"]["ppo-1"]["status"] == "running" and snap["runs"]["ppo-1"]["step"] == 20
    assert (snap["runs"]["ppo-2"]["status"], snap["runs"]["ppo-2"]["error"]) == ("failed", "boom")
    assert snap["latest"]["metrics/ppo-1"]["train/loss"]["value"] == 0.5
    assert snap["latest"]["metrics/ppo-1"]["train/loss"]["step"] == 20
    assert "cfg" not in snap["latest"]["metrics/ppo-1"]  # structures are not readings
    assert snap["latest"]["system/gpu-3"]["cpu/percent"]["value"] == 12.5
    assert [(a["data"]["rule"], a["data"]["state"]) for a in snap["alerts"]] == [("nan", "firing")]

    live = [msg("metrics", "ppo-1", {"train/loss": 0.1 * i}, step=30 + i) for i in range(50)]
    for part in (live[:20], live[20:]):
        sink.handle(part)
    wait_until(lambda: len(c.messages()) == 50, 10, "50 live messages")
    got = c.messages()
    assert [m["seq"] for m in got] == [m.seq for m in live]
    assert got[0] == {**live[0].to_dict()}  # the payload, as a JSONL line holds it
    assert c.frames[0]["type"] == "snapshot"  # nothing came before the snapshot


def test_non_finite_numbers_round_trip_as_strings_that_strict_json_accepts(
    sink: WebSocketSink, clients: list[Client]
) -> None:
    """NaN, +Inf and -Inf arrive as "NaN", "Infinity", "-Infinity" in strict JSON, also nested and in the snapshot."""
    c = Client(sink.url)
    clients.append(c)
    sink.handle([msg("metrics", "r", {"a": math.nan}, step=1)])
    c.subscribe(topics=["metrics/"])
    snap = c.wait_frame("snapshot")
    assert snap["latest"]["metrics/r"]["a"]["value"] == "NaN"
    sink.handle([msg("metrics", "r", {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.5, "e": None,
                                      "n": {"x": [math.inf, 2]}}, step=2)])  # fmt: skip
    wait_until(lambda: c.messages(), 10, "the message")
    data = c.messages()[0]["data"]
    assert data == {"a": "NaN", "b": "Infinity", "c": "-Infinity", "d": 1.5, "e": None, "n": {"x": ["Infinity", 2]}}
    assert math.isnan(float(data["a"])) and float(data["b"]) == math.inf and float(data["c"]) == -math.inf


def test_topics_and_run_regex_filter_and_can_be_changed_later(sink: WebSocketSink, clients: list[Client]) -> None:
    """A client gets only its topics and runs; a new subscribe sends a new snapshot and switches the stream."""
    c = Client(sink.url)
    clients.append(c)
    c.subscribe(topics=["metrics/", "episode/"], run="^ppo-(1|2)$")
    c.wait_frame("snapshot")
    sink.handle(
        [
            msg("metrics", "ppo-1", {"x": 1}),
            msg("metrics", "ppo-12", {"x": 2}),
            msg("episode", "ppo-2", {"reward": 3}),
            msg("event", "ppo-1", {"event": "heartbeat"}),
            msg("system", None, {"cpu/percent": 4}),
            msg("metrics", "ppo-2", {"x": 5}),
        ]
    )
    wait_until(lambda: len(c.messages()) >= 3, 10, "three messages")
    assert [m["data"] for m in c.messages()] == [{"x": 1}, {"reward": 3}, {"x": 5}]

    c.subscribe(topics=["system/"])
    snap = c.wait_frame("snapshot", 2)
    assert snap["subscription"] == {"topics": ["system/"], "run": None}
    assert list(snap["latest"]) == ["system/n1"]
    sink.handle([msg("metrics", "ppo-1", {"x": 6}), msg("system", None, {"cpu/percent": 7})])
    wait_until(lambda: len(c.messages()) >= 4, 10, "the system message")
    assert c.messages()[3]["data"] == {"cpu/percent": 7}
    sink.handle([msg("system", None, {"cpu/percent": 8})])
    wait_until(lambda: len(c.messages()) >= 5, 10, "the next system message")
    assert [m["kind"] for m in c.messages()[3:]] == ["system", "system"]


@pytest.mark.parametrize(
    ("request_text", "error"),
    [
        ("{not json", "not JSON text"),
        ('{"type": "hello"}', 'expected {"type": "subscribe"'),
        ('{"type": "subscribe", "run": "ppo-("}', "subscribe.run: not a valid regex"),
        ('{"type": "subscribe", "run": "(a+)+$"}', "repetition inside a repetition"),
        ('{"type": "subscribe", "run": "(ppo|sac)*x"}', "repetition inside a repetition"),
        ('{"type": "subscribe", "run": "' + "a" * 300 + '"}', "at most 256 characters"),
        ('{"type": "subscribe", "topics": "metrics/"}', "subscribe.topics: expected a list of strings"),
        ('{"type": "subscribe", "topic": ["metrics/"]}', "unknown field(s) topic"),
    ],
)
def test_a_bad_subscribe_gets_an_error_frame_and_the_connection_stays(
    sink: WebSocketSink, clients: list[Client], request_text: str, error: str
) -> None:
    """Bad JSON, a bad or dangerous regex or a mistyped field gets an error frame; a good subscribe then works."""
    c = Client(sink.url)
    clients.append(c)
    c.ws.send(request_text)
    assert error in c.wait_frame("error")["error"]
    assert not c.of_type("snapshot")
    c.subscribe(run="^ok$")
    assert c.wait_frame("snapshot")["subscription"]["run"] == "^ok$"


class StalledClient:
    """A websockets client (the library's sans-I/O protocol) that reads its socket only when told to.

    With a small receive buffer and nobody reading, the server's writes to it soon block.
    """

    def __init__(self, url: str) -> None:
        from websockets.client import ClientProtocol
        from websockets.protocol import State
        from websockets.uri import parse_uri

        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self.pending: list[dict[str, Any]] = []
        while self.protocol.state is State.CONNECTING:  # the handshake's answer
            self.protocol.receive_data(self.sock.recv(4096))
        assert self.protocol.state is State.OPEN, self.protocol.handshake_exc

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def subscribe(self, **fields: Any) -> None:
        self.protocol.send_text(json.dumps({"type": "subscribe", **fields}).encode())
        self._flush()

    def read_frame(self) -> dict[str, Any]:
        from websockets.frames import Frame, Opcode

        while not self.pending:
            data = self.sock.recv(1 << 20)
            assert data, "the server closed the connection"
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    self.pending.append(strict_loads(event.data))
            self._flush()  # pongs
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


def test_a_stalled_client_loses_its_oldest_and_is_told_while_a_fast_one_gets_everything(clients: list[Client]) -> None:
    """A client that stops reading fills only its own queue: it gets a dropped count, the fast client every message."""
    sink = WebSocketSink(port=0, client_queue=2000)
    stalled = StalledClient(sink.url)
    try:
        fast = Client(sink.url)
        clients.append(fast)
        fast.subscribe(topics=["metrics/"])
        stalled.subscribe(topics=["metrics/"])
        fast.wait_frame("snapshot")
        # subscribed, not just connected: a batch sent before the stalled filter is in force never reaches it
        wait_until(lambda: sink.stats()["subscribed"] == 2, 10, "both clients subscribed")
        blob = "x" * 4000
        sent = 0

        def stalled_overflows() -> bool:
            # the next batch only once the fast client has everything: it is never the one behind
            nonlocal sent
            if len(fast.messages()) == sent:
                sink.handle([msg("metrics", "r", {"blob": blob}, step=sent + i) for i in range(200)])
                sent += 200
            return sink.stats()["dropped"] > 0

        wait_until(stalled_overflows, 60, "the stalled client's queue to overflow")
        wait_until(lambda: len(fast.messages()) == sent, 30, f"all {sent} messages at the fast client")
        assert not fast.of_type("dropped")
        assert [m["step"] for m in fast.messages()] == list(range(sent))

        # The stalled client reads again: it is told what it lost, then gets the newest messages.
        assert stalled.read_frame()["type"] == "snapshot"
        steps: list[int] = []
        frame = stalled.read_frame()
        while frame["type"] == "messages":
            steps += [m["step"] for m in frame["messages"]]
            frame = stalled.read_frame()
        assert frame["type"] == "dropped" and frame["count"] == sink.stats()["dropped"] > 0
        rest = stalled.read_frame()
        assert rest["type"] == "messages" and rest["messages"][-1]["step"] == sent - 1
        assert len(steps) + frame["count"] + len(rest["messages"]) == sent
    finally:
        stalled.close()
        sink.close()


def test_a_foreign_browser_origin_is_refused_and_loopback_pages_are_let_in(sink: WebSocketSink) -> None:
    """Origins of other sites and null (file://, sandboxed iframes) get 403; loopback pages and non-browsers connect."""
    for origin in ("http://evil.example", "http://127.0.0.1.evil.example:80", "null", "http://127.0.0.2:8000"):
        with pytest.raises(InvalidStatus) as refused, connect(sink.url, origin=origin, open_timeout=10):
            pass
        assert refused.value.response.status_code == 403, origin
    for origin in ("http://127.0.0.1:8050", "http://localhost:3000", "http://localhost", None):
        with connect(sink.url, origin=origin, open_timeout=10):
            pass
    assert sink.stats()["refused_origin"] == 4


def test_allowed_origins_can_add_null_and_a_host(tmp_path: Path) -> None:
    """allowed_origins replaces the default list: listed origins connect, others (loopback too) are refused."""
    s = WebSocketSink(port=0, allowed_origins=["null", "http://dash.lab:8050"])
    try:
        for origin in ("null", "http://dash.lab:8050"):
            with connect(s.url, origin=origin, open_timeout=10):
                pass
        with pytest.raises(InvalidStatus), connect(s.url, origin="http://127.0.0.1:8050", open_timeout=10):
            pass
    finally:
        s.close()
    with pytest.raises(ValueError, match=r"allowed_origins\[0\]: expected 'null' or scheme://host"):
        WebSocketSink(port=0, allowed_origins=["http://x/path"])


def test_a_non_loopback_bind_needs_a_token_and_refuses_clients_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """host 0.0.0.0 without token_env fails to start; with it, a client without the right token gets 401."""
    with pytest.raises(ValueError, match=r"host '0.0.0.0' is not a loopback address: set token_env"):
        WebSocketSink(host="0.0.0.0", port=0)
    with pytest.raises(ValueError, match=r"token_env names 'MB_WS_TOKEN', but that environment variable is unset"):
        WebSocketSink(host="0.0.0.0", port=0, token_env="MB_WS_TOKEN")
    monkeypatch.setenv("MB_WS_TOKEN", "s3cret-token")
    s = WebSocketSink(host="0.0.0.0", port=0, token_env="MB_WS_TOKEN")
    try:
        url = f"ws://127.0.0.1:{s.url.rsplit(':', 1)[1]}"  # bound everywhere; reached on loopback
        for headers, path in (({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "/?token=wrong")):
            with (
                pytest.raises(InvalidStatus) as refused,
                connect(url + path, additional_headers=headers, open_timeout=10),
            ):
                pass
            assert refused.value.response.status_code == 401
        for headers, path in (({"Authorization": "Bearer s3cret-token"}, ""), ({}, "/?token=s3cret-token")):
            with connect(url + path, additional_headers=headers, open_timeout=10) as ws:
                ws.send(json.dumps({"type": "subscribe"}))
                assert strict_loads(ws.recv(timeout=10))["type"] == "snapshot"
        assert s.stats()["refused_token"] == 3
    finally:
        s.close()


def test_through_a_real_stack_and_a_client_reconnects_after_the_sink_restarts(
    stack_factory: type[Stack], tmp_path: Path
) -> None:
    """Publisher → broker → websocket sink process → client; the killed sink is restarted, the client reconnects."""
    port = free_port()
    stack = stack_factory(tmp_path, sinks={"ws": {"type": "websocket", "port": port}}).start()
    url = f"ws://127.0.0.1:{port}"
    with Publisher(stack.frontend, run="live") as pub:
        c = Client(url)
        c.subscribe(topics=["metrics/live"])
        c.wait_frame("snapshot")
        pub.metrics({"x": math.nan}, step=1)
        assert pub.flush(15)  # if the broker's subscription came late, the message waits in the backlog
        wait_until(lambda: c.messages(), 15, "the first live message")
        assert c.messages()[0]["data"] == {"x": "NaN"}

        os.kill(stack.child_pid("sink ws"), signal.SIGKILL)
        assert c.closed.wait(15), "the client saw its connection drop"
        c.close()

        def reconnected() -> Client | None:
            try:
                return Client(url)
            except (OSError, InvalidHandshake):  # not listening yet, or closing as it starts
                return None

        again = wait_until(reconnected, 30, "the restarted sink to accept", interval=0.2)
        try:
            again.subscribe(topics=["metrics/live"])
            again.wait_frame("snapshot")

            def arrived() -> bool:
                pub.metrics({"x": 2.0}, step=2)
                return bool(again.messages())

            wait_until(arrived, 15, "a message through the restarted sink", interval=0.2)
            assert again.messages()[0]["data"] == {"x": 2.0}
        finally:
            again.close()


def test_the_readme_python_client_runs_as_printed(sink: WebSocketSink) -> None:
    """The README's Python client, verbatim but for the port, prints the snapshot's runs and live messages."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Live stream over WebSocket\n") :]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    assert 'connect("ws://127.0.0.1:8765")' in code
    code = code.replace("8765", sink.url.rsplit(":", 1)[1])
    sink.handle([msg("event", "ppo-1", {"event": "run_started"}), msg("event", "sac-1", {"event": "run_started"})])
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: sink.stats()["clients"] == 1 and lines, 60, "the client's snapshot line")
        sink.handle([msg("metrics", "ppo-1", {"train/loss": math.nan}, step=7), msg("metrics", "sac-1", {"x": 1})])
        wait_until(lambda: len(lines) >= 2, 10, "the client's message line")
    finally:
        proc.kill()
        proc.wait()
        reader.join(5)
        proc.stdout.close()  # type: ignore[union-attr]
    assert lines[0] == "runs: {'ppo-1': 'running'}\n"
    assert lines[1] == "ppo-1 7 {'train/loss': 'NaN'}\n"


def test_metricbus_sinks_lists_the_websocket_sink_and_the_default_config_has_it() -> None:
    """`metricbus sinks` shows the websocket sink with its options; configs/default.yaml runs one on loopback."""
    from bus.config import load_config

    result = subprocess.run(
        [sys.executable, "-m", "metricbus", "sinks"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^websocket  \[built-in\] sinks\.websocket\.sink:WebSocketSink$", result.stdout, flags=re.M)
    assert "    token_env: str | None = None" in result.stdout
    shipped = load_config(None).sinks["websocket"]
    assert (shipped.type, shipped.options["host"], shipped.options["port"]) == ("websocket", "127.0.0.1", 8765)
