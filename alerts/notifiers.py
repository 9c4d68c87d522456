"""Where alerts go besides the bus: a log line, a webhook, a command, an e-mail.

Every notifier runs in its own worker thread behind a bounded queue: the engine only
enqueues, so a slow or dead endpoint never delays evaluation. A failed delivery is
retried with exponential back-off and then logged and dropped; the worker goes on. A
retry waits in a bounded schedule of its own, not in the worker: alerts that fail (a
hostile name, an endpoint that refuses one of them) never hold up the next alert.

Names in an alert come from the wire. What goes into argv, the environment, headers and
subjects has control characters (NUL, CR, LF, …) replaced, so no alert can fail a
notifier or forge a header line.

Secrets never live in the YAML: a webhook URL may come from ``url_env``, SMTP
credentials from ``username_env``/``password_env``. The command notifier runs an argv
list without a shell and hands the alert over in ``METRICBUS_ALERT_*`` variables.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import math
import os
import queue
import smtplib
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any, ClassVar, Final

from alerts.rules import SEVERITIES, RuleError, parse_duration
from bus.options import Where, construct_checked

log = logging.getLogger("metricbus.alerts")

Alert = Mapping[str, Any]
#: Alerts waiting for one notifier; past this, new ones are dropped (and counted).
QUEUE_SIZE: Final = 1000
#: Failed alerts waiting for their next attempt; past this, the oldest is dropped (counted).
RETRY_SIZE: Final = 100
#: Control characters (C0, DEL, C1) -> a space: NUL ends a C string, CR/LF end a header.
_CONTROL: Final = {c: " " for c in [*range(0x20), *range(0x7F, 0xA0)]}
_LOG_LEVELS: Final = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def clean(text: object) -> str:
    """``str(text)`` with control characters replaced by spaces (safe for argv, env and headers)."""
    return str(text).translate(_CONTROL)


def alert_text(alert: Alert) -> str:
    """One human line: ``[critical] FIRING nan-train on ppo-1: train/loss is nan … — check: …``.

    A firing alert ends with its rule's hint (what to check), so a phone notification alone
    says what to do; the hint is also its own field for the JSON notifiers.
    """
    text = f"[{alert['severity']}] {str(alert['state']).upper()} {alert['rule']}: {alert['message']}"
    hint = alert.get("hint")
    return clean(f"{text} — check: {hint}" if hint and alert.get("state") == "firing" else text)


def strict_json(alert: Alert) -> dict[str, Any]:
    """The alert with NaN/±Inf as the strings "nan"/"inf"/"-inf": strict JSON parsers reject them."""
    return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in alert.items()}


def alert_env(alert: Alert) -> dict[str, str]:
    """The alert as ``METRICBUS_ALERT_<FIELD>`` variables, plus the whole of it as JSON."""
    env = {
        f"METRICBUS_ALERT_{clean(key).upper().replace('=', '_')}": "" if value is None else clean(value)
        for key, value in alert.items()
    }
    env["METRICBUS_ALERT_JSON"] = json.dumps(strict_json(alert), default=str, allow_nan=False)  # escapes controls
    return env


class Notifier:
    """Delivers one alert or raises; the worker around it handles retries."""

    type: ClassVar[str] = ""

    def send(self, alert: Alert) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.type


class LogNotifier(Notifier):
    """A structured line on stderr (through logging): the alert as one JSON object."""

    type = "log"

    def __init__(self, logger: str = "metricbus.alerts") -> None:
        self.logger = logging.getLogger(logger)

    def send(self, alert: Alert) -> None:
        level = _LOG_LEVELS.get(str(alert.get("severity")), logging.CRITICAL)
        self.logger.log(level, "alert %s", json.dumps(dict(alert), default=str, allow_nan=True))


class WebhookNotifier(Notifier):
    """HTTP POST of the alert as JSON, with a Slack-compatible ``text`` field."""

    type = "webhook"

    def __init__(
        self,
        url: str | None = None,
        url_env: str | None = None,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if (url is None) == (url_env is None):
            raise RuleError("url", "exactly one of url or url_env")
        if url_env is not None:
            url = os.environ.get(url_env)
            if not url:
                raise RuleError("url_env", f"the name of a set environment variable ({url_env} is unset)")
        assert url is not None
        if not url.startswith(("http://", "https://")):
            raise RuleError("url", "an http:// or https:// URL", url)
        self.url = url
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", **(headers or {})}

    def send(self, alert: Alert) -> None:
        body = json.dumps({"text": alert_text(alert), **strict_json(alert)}, default=str, allow_nan=False).encode()
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            response.read()

    def describe(self) -> str:
        return f"webhook {self.url.split('?')[0]}"  # the query may hold a token


class CommandNotifier(Notifier):
    """Runs ``argv`` (never through a shell) with the alert in ``METRICBUS_ALERT_*`` variables."""

    type = "command"

    def __init__(self, argv: list[str], timeout: float = 30.0) -> None:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise RuleError("argv", "a non-empty list of strings: the program and its arguments", argv)
        self.argv = argv
        self.timeout = timeout

    def send(self, alert: Alert) -> None:
        env = {**os.environ, **alert_env(alert)}
        done = subprocess.run(self.argv, env=env, timeout=self.timeout, capture_output=True, check=False)
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip()[-300:]
            raise RuntimeError(f"{self.argv[0]} exited {done.returncode}: {err}")

    def describe(self) -> str:
        return f"command {self.argv[0]}"


class EmailNotifier(Notifier):
    """An e-mail per alert over SMTP; credentials come from the environment, never the YAML."""

    type = "email"

    def __init__(
        self,
        to: list[str],
        sender: str = "metricbus@localhost",
        host: str = "localhost",
        port: int = 25,
        starttls: bool = False,
        ssl: bool = False,
        username_env: str | None = None,
        password_env: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not to or not all(isinstance(a, str) and "@" in a for a in to):
            raise RuleError("to", "a non-empty list of e-mail addresses", to)
        self.to = to
        self.sender = sender
        self.host = host
        self.port = port
        self.starttls = starttls
        self.ssl = ssl
        self.username_env = username_env
        self.password_env = password_env
        self.timeout = timeout

    def send(self, alert: Alert) -> None:
        mail = EmailMessage()
        mail["Subject"] = f"[metricbus] {alert_text(alert)}"[:200]
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.to)
        lines = [alert_text(alert), ""] + [clean(f"{k}: {v}") for k, v in alert.items()]
        mail.set_content("\n".join(lines))
        smtp_class = smtplib.SMTP_SSL if self.ssl else smtplib.SMTP
        with smtp_class(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username_env:
                smtp.login(os.environ.get(self.username_env, ""), os.environ.get(self.password_env or "", ""))
            smtp.send_message(mail)

    def describe(self) -> str:
        return f"email {self.host}:{self.port}"


TYPES: Final[dict[str, type[Notifier]]] = {
    cls.type: cls for cls in (LogNotifier, WebhookNotifier, CommandNotifier, EmailNotifier)
}
#: Keys of a ``notify`` entry that configure its worker, not the notifier itself.
WORKER_KEYS: Final = ("type", "min_severity", "retries", "backoff", "states")


class NotifierWorker:
    """A notifier behind a bounded queue and a thread that retries with back-off."""

    def __init__(
        self,
        notifier: Notifier,
        *,
        min_severity: str = "info",
        states: tuple[str, ...] = ("firing", "resolved"),
        retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        self.notifier = notifier
        self.min_rank = SEVERITIES.index(min_severity)
        self.states = states
        self.retries = retries
        self.backoff = backoff
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(QUEUE_SIZE)
        #: (due on the monotonic clock, order, attempts so far, alert): retries, soonest first
        self._retries: list[tuple[float, int, int, Alert]] = []
        self._order = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"notify-{notifier.type}", daemon=True)
        self._thread.start()

    def submit(self, alert: Alert) -> None:
        """Queue ``alert`` if it passes the filters; never blocks."""
        if SEVERITIES.index(str(alert["severity"])) < self.min_rank or alert["state"] not in self.states:
            return
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("notifier %s: queue full, %d alerts dropped", self.notifier.describe(), self.dropped)

    def idle(self) -> bool:
        """True when nothing is queued, being sent or waiting for a retry (for tests and shutdown)."""
        return self._queue.unfinished_tasks == 0 and not self._retries

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout``, then stop (retries are cut short)."""
        deadline = time.monotonic() + timeout
        while not self.idle() and time.monotonic() < deadline:
            time.sleep(0.02)  # the worker drains on its own; there is no queue event to wait on
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.1)

    def _run(self) -> None:
        while True:
            try:
                alert = self._queue.get_nowait()  # new alerts first: a retry never delays one
            except queue.Empty:
                if self._retry_one():
                    continue
                timeout = max(0.0, self._retries[0][0] - time.monotonic()) if self._retries else None
                try:
                    alert = self._queue.get(timeout=timeout)
                except queue.Empty:
                    continue  # a retry is due
            try:
                if alert is None:
                    self._give_up_retries()
                    return
                self._attempt(alert, 0)
            finally:
                self._queue.task_done()

    def _retry_one(self) -> bool:
        """Try the retry that is due first, if one is; True if one was tried."""
        if self._stop.is_set():
            self._give_up_retries()
            return False
        if not self._retries or self._retries[0][0] > time.monotonic():
            return False
        _, _, attempts, alert = heapq.heappop(self._retries)
        self._attempt(alert, attempts)
        return True

    def _attempt(self, alert: Alert, attempts: int) -> None:
        try:
            self.notifier.send(alert)
            self.sent += 1
            return
        except Exception as exc:  # any failure of an endpoint is logged, never raised
            last = f"{type(exc).__name__}: {exc}"
        attempts += 1
        if attempts <= self.retries and not self._stop.is_set():
            delay = self.backoff * 2 ** (attempts - 1)
            log.info("notifier %s failed (%s); retry in %.1f s", self.notifier.describe(), last, delay)
            if len(self._retries) >= RETRY_SIZE:
                # keep the newest failures; the oldest has had the most tries
                self._retries.remove(min(self._retries, key=lambda r: r[1]))
                heapq.heapify(self._retries)
                self.dropped += 1
            self._order += 1
            heapq.heappush(self._retries, (time.monotonic() + delay, self._order, attempts, alert))
            return
        self.failed += 1
        log.warning(
            "notifier %s: gave up on alert %s/%s after %d attempts: %s",
            self.notifier.describe(), alert.get("rule"), alert.get("state"), attempts, last,
        )  # fmt: skip

    def _give_up_retries(self) -> None:
        self.failed += len(self._retries)
        self._retries.clear()


def _options(raw: Mapping[str, Any], where: Where) -> tuple[type[Notifier], dict[str, Any], dict[str, Any]]:
    kind = raw.get("type")
    if kind not in TYPES:
        raise where.key("type").error(f"expected a notifier type ({', '.join(TYPES)}), got {kind!r}")
    cls = TYPES[kind]
    worker: dict[str, Any] = {}
    if "min_severity" in raw:
        if raw["min_severity"] not in SEVERITIES:
            raise where.key("min_severity").error(
                f"expected one of {', '.join(SEVERITIES)}, got {raw['min_severity']!r}"
            )
        worker["min_severity"] = raw["min_severity"]
    if "states" in raw:
        states = raw["states"]
        if not isinstance(states, list) or not set(states) <= {"firing", "resolved"} or not states:
            raise where.key("states").error(f"expected a list of firing and/or resolved, got {states!r}")
        worker["states"] = tuple(states)
    if "retries" in raw:
        if not isinstance(raw["retries"], int) or isinstance(raw["retries"], bool) or raw["retries"] < 0:
            raise where.key("retries").error(f"expected an integer >= 0, got {raw['retries']!r}")
        worker["retries"] = raw["retries"]
    if "backoff" in raw:
        try:
            worker["backoff"] = parse_duration(raw["backoff"], "backoff")
        except RuleError as exc:
            raise where.key("backoff").error(str(exc)) from None
    options = {k: v for k, v in raw.items() if k not in WORKER_KEYS}
    return cls, options, worker


def build_notifiers(raw: object, where: Where) -> list[NotifierWorker]:
    """Workers for a ``notify`` list; errors name the key path (``notify[1].url``)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise where.error(f"expected a list of notifiers such as [{{type: log}}], got {raw!r}")
    workers: list[NotifierWorker] = []
    try:
        for i, item in enumerate(raw):
            at = where.index(i)
            if not isinstance(item, dict):
                raise at.error(f"expected a notifier mapping with a type ({', '.join(TYPES)}), got {item!r}")
            cls, options, worker = _options(item, at)
            notifier = construct_checked(cls, options, at, f"notifier {cls.type}")
            workers.append(NotifierWorker(notifier, **worker))
    except BaseException:
        for w in workers:
            w.close(timeout=0)
        raise
    return workers


def check_notify(raw: object, where: Where) -> None:
    """Validate a ``notify`` list without starting anything."""
    if raw is None:
        return
    if not isinstance(raw, list):
        raise where.error(f"expected a list of notifiers such as [{{type: log}}], got {raw!r}")
    for i, item in enumerate(raw):
        at = where.index(i)
        if not isinstance(item, dict):
            raise at.error(f"expected a notifier mapping with a type ({', '.join(TYPES)}), got {item!r}")
        cls, options, _ = _options(item, at)
        # url_env may be set only where the sink runs; check its shape, not its value, here
        if cls is WebhookNotifier and "url_env" in options:
            options = {**options, "url": "http://placeholder", "url_env": None}
        construct_checked(cls, options, at, f"notifier {cls.type}")
