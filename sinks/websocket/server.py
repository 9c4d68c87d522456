"""The asyncio WebSocket server behind the ``websocket`` sink, on a thread of its own.

The sink's thread calls :meth:`StreamServer.publish` with each batch: it appends the batch to
an inbox and, at most once until the server's loop has looked, wakes the loop. Everything
else happens in the loop: the snapshot is updated, each message is encoded once (only if
some client wants it) and appended to the queue of each client whose filter takes it, and a
sender per client writes frames. So a slow client, or many, never slows the sink's thread.

Back-pressure per client: its queue holds at most ``client_queue`` messages; when full the
oldest goes, and the client is told how many in a ``dropped`` frame before its next
messages. A client whose socket does not drain blocks only its own sender. A frame carries
what queued since the last one: at most ``frame_interval`` after the previous frame, so a
client gets at most ``1 / frame_interval`` frames a second however fast messages come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Final

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bus.message import Message
from sinks.websocket.access import OriginPolicy, presented_token, token_matches
from sinks.websocket.frames import dropped_frame, error_frame, message_json, messages_frame, snapshot_frame
from sinks.websocket.snapshot import Snapshot
from sinks.websocket.subscription import Subscription, SubscriptionError, parse_subscription

log = logging.getLogger("metricbus.websocket")

#: A client's own messages (subscribe) are small; anything bigger is refused by the library.
MAX_CLIENT_MESSAGE: Final = 64 * 1024
#: Refused origins are logged once each, up to this many.
_MAX_LOGGED: Final = 100


class _Client:
    """One connection: its filter, its bounded queue and what it has been told."""

    def __init__(self, connection: ServerConnection, limit: int) -> None:
        self.connection = connection
        self.subscription: Subscription | None = None
        self.queue: deque[bytes] = deque(maxlen=limit)  # full: appending drops the oldest
        self.control: deque[str] = deque()  # snapshot and error frames, sent before messages
        self.dropped = 0  # not yet reported
        self.dropped_total = 0
        self.sent = 0
        self.last_frame = -1e9
        self.ready = asyncio.Event()


class StreamServer:
    """Serves the bus as JSON over WebSocket at ``ws://host:port``; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        origins: OriginPolicy,
        token: str | None,
        snapshot: Snapshot,
        max_clients: int = 100,
        client_queue: int = 10_000,
        frame_interval: float = 0.005,
        frame_messages: int = 5000,
        inbox_batches: int = 1000,
        compress: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.origins = origins
        self.token = token
        self.snapshot = snapshot
        self.max_clients = max_clients
        self.client_queue = client_queue
        self.frame_interval = frame_interval
        self.frame_messages = frame_messages
        self.inbox_batches = inbox_batches
        self.compress = compress
        # written by the sink's thread (deque appends and pops are atomic), drained by the loop
        self._inbox: deque[Sequence[Message]] = deque()
        self._wake_pending = False
        self.inbox_dropped = 0  # messages lost because the loop fell behind (sink thread writes)
        self._inbox_dropped_seen = 0
        # the loop's own state
        self._clients: set[_Client] = set()
        self._groups: list[tuple[Subscription, list[_Client]]] = []
        self.refused_origin = 0
        self.refused_token = 0
        self.sent = 0
        self.dropped = 0
        self._logged: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="websocket-server", daemon=True)

    # -- the sink's side ---------------------------------------------------------------------

    def start(self) -> None:
        """Listen; returns once the port is bound (raises :class:`OSError` if it cannot be)."""
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join(timeout=5.0)
            raise self._error

    def publish(self, batch: Sequence[Message]) -> None:
        """Hand ``batch`` to the server; never blocks. Called from the sink's thread."""
        inbox = self._inbox
        if len(inbox) >= self.inbox_batches:
            # the loop is starved (this process is overloaded): shed the oldest, tell clients
            with contextlib.suppress(IndexError):  # the loop may have taken it meanwhile
                self.inbox_dropped += len(inbox.popleft())
        inbox.append(batch)
        if not self._wake_pending and self._loop is not None:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._dispatch)

    def close(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def subscribed(self) -> int:
        """Clients whose subscription is in force (a connected client gets nothing before it)."""
        return sum(len(clients) for _, clients in self._groups)

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop))
        finally:
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stopping = asyncio.Event()
        try:
            server: Server = await serve(
                self._serve_client,
                self.host,
                self.port,
                process_request=self._check_request,
                max_size=MAX_CLIENT_MESSAGE,
                close_timeout=2.0,  # a stalled client must not hold up a stopping sink for long
                # per-message deflate costs a compression per client per frame: off unless asked for
                compression="deflate" if self.compress else None,
                logger=logging.getLogger("metricbus.websocket.protocol"),
            )
        except OSError as exc:
            self._error = OSError(f"websocket: cannot listen on ws://{self.host}:{self.port}: {exc}")
            self._started.set()
            return
        self.port = int(server.sockets[0].getsockname()[1])
        self._loop = loop
        self._started.set()
        await self._stopping.wait()
        self._loop = None
        server.close()  # closes every connection with 1001 "going away": clients reconnect
        await server.wait_closed()

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        origin = request.headers.get("Origin")
        if not self.origins.allows(origin):
            self.refused_origin += 1
            self._log_once(f"origin {origin}", "refused a connection from origin %r (not in allowed_origins)", origin)
            return connection.respond(HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n")
        if self.token is not None:
            presented = presented_token(request.path, request.headers.get("Authorization"))
            if not token_matches(self.token, presented):
                self.refused_token += 1
                self._log_once("token", "refused a connection without the right token (first of its kind)")
                return connection.respond(HTTPStatus.UNAUTHORIZED, "a token is required\n")
        return None

    async def _serve_client(self, connection: ServerConnection) -> None:
        if len(self._clients) >= self.max_clients:
            await connection.close(1013, f"at most {self.max_clients} clients")
            return
        client = _Client(connection, self.client_queue)
        self._clients.add(client)
        sender = asyncio.create_task(self._send(client))
        try:
            async for raw in connection:
                self._on_client_message(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            if client.subscription is not None:
                self._regroup()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    def _on_client_message(self, client: _Client, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
            if not isinstance(message, dict) or message.get("type") != "subscribe":
                raise SubscriptionError('expected {"type": "subscribe", "topics": [...], "run": "regex"}')
            subscription = parse_subscription(message)
        except (ValueError, UnicodeDecodeError) as exc:  # json's errors are ValueErrors too
            text = str(exc) if isinstance(exc, SubscriptionError) else f"not JSON text: {exc}"
            client.control.append(error_frame(text))
            client.ready.set()
            return
        # what was queued under the old filter is dropped: the snapshot starts the new stream
        client.subscription = subscription
        client.queue.clear()
        snapshot = self.snapshot.view(subscription)
        client.control.append(snapshot_frame({"subscription": subscription.describe(), **snapshot}))
        client.ready.set()
        self._regroup()

    def _regroup(self) -> None:
        """Clients with the same filter share one decision per message."""
        groups: dict[tuple[Any, ...], tuple[Subscription, list[_Client]]] = {}
        for client in self._clients:
            sub = client.subscription
            if sub is None:
                continue
            key = (sub.topics, sub.run.pattern if sub.run is not None else None)
            groups.setdefault(key, (sub, []))[1].append(client)
        self._groups = list(groups.values())

    def _dispatch(self) -> None:
        self._wake_pending = False
        inbox, take, groups = self._inbox, self.snapshot.take, self._groups
        # per group, what its clients get from this dispatch; then one extend per client
        news: list[list[bytes]] = [[] for _ in groups]
        while inbox:
            batch = inbox.popleft()
            for message in batch:
                topic, run = message.topic, message.run
                take(message, topic)
                text = None
                for (sub, _), new in zip(groups, news, strict=True):
                    if sub.wants(topic, run):
                        if text is None:
                            text = message_json(message)  # once, whatever the number of clients
                        new.append(text)
        lost = self.inbox_dropped - self._inbox_dropped_seen
        self._inbox_dropped_seen += lost
        for (_, clients), new in zip(groups, news, strict=True):
            if not new and not lost:
                continue
            for client in clients:
                queue = client.queue
                # the deque's maxlen drops the oldest: count what it drops (and what the inbox shed)
                count = max(0, len(queue) + len(new) - self.client_queue) + lost
                if count:
                    client.dropped += count
                    self.dropped += count
                queue.extend(new)
                client.ready.set()

    async def _send(self, client: _Client) -> None:
        loop = asyncio.get_running_loop()
        connection = client.connection
        try:
            while True:
                await client.ready.wait()
                client.ready.clear()
                pause = client.last_frame + self.frame_interval - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                while client.control:
                    await connection.send(client.control.popleft())
                if client.dropped:
                    count, client.dropped = client.dropped, 0
                    client.dropped_total += count
                    await connection.send(dropped_frame(count, client.dropped_total))
                queue = client.queue
                if queue:
                    if len(queue) <= self.frame_messages:
                        texts = list(queue)
                        queue.clear()
                    else:
                        texts = [queue.popleft() for _ in range(self.frame_messages)]
                    await connection.send(messages_frame(texts), text=True)
                    client.sent += len(texts)
                    self.sent += len(texts)
                    if queue:
                        client.ready.set()
                client.last_frame = loop.time()
        except ConnectionClosed:
            return

    def _log_once(self, key: str, text: str, *args: Any) -> None:
        if key not in self._logged and len(self._logged) < _MAX_LOGGED:
            self._logged.add(key)
            log.warning("websocket: " + text, *args)
