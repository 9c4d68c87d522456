"""Notifiers against real endpoints on loopback: an HTTP server, a program, an SMTP server."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import free_port, wait_until

from alerts import AlertEngine
from alerts.notifiers import CommandNotifier, EmailNotifier, LogNotifier, NotifierWorker, WebhookNotifier
from bus.message import Message

ALERT = {
    "rule": "grad-explosion",
    "severity": "error",
    "state": "firing",
    "message": "grad-explosion: grad/global_norm = 42 on ppo-1",
    "metric": "grad/global_norm",
    "value": 42.0,
    "threshold": 10.0,
    "since": 1700000000.0,
    "source": "ppo-1",
    "run": "ppo-1",
    "node": "gpu-3",
    "step": 2048,
    "ts": 1700000001.0,
}


class Hook:
    """A real HTTP server on loopback that records POSTed JSON and answers the statuses it is given."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(body))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=secret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


@pytest.fixture
def workers() -> Iterator[list[NotifierWorker]]:
    made: list[NotifierWorker] = []
    yield made
    for w in made:
        w.close(timeout=1)


def test_webhook_posts_the_alert_with_a_slack_text(hook: Hook, workers: list[NotifierWorker]) -> None:
    """The webhook POSTs the alert's fields as JSON plus a Slack-compatible `text` line."""
    workers.append(worker := NotifierWorker(WebhookNotifier(url=hook.url)))
    worker.submit(ALERT)
    wait_until(lambda: hook.bodies, 10, "the POST")
    body = hook.bodies[0]
    assert body["text"] == "[error] FIRING grad-explosion: grad-explosion: grad/global_norm = 42 on ppo-1"
    assert {k: body[k] for k in ALERT} == ALERT


def test_webhook_url_from_the_environment_and_retry_after_an_error(
    hook: Hook, workers: list[NotifierWorker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """url_env reads the URL from the environment; a 500 is retried with back-off until it succeeds."""
    monkeypatch.setenv("TEST_HOOK_URL", hook.url)
    hook.statuses = [500, 503]
    workers.append(worker := NotifierWorker(WebhookNotifier(url_env="TEST_HOOK_URL"), retries=3, backoff=0.05))
    worker.submit(ALERT)
    wait_until(lambda: worker.sent == 1, 10, "a delivery after two failures")
    assert len(hook.bodies) == 3
    assert worker.failed == 0


def test_endpoint_down_gives_up_and_never_blocks(
    workers: list[NotifierWorker], caplog: pytest.LogCaptureFixture
) -> None:
    """A webhook whose server is down is retried, then logged and dropped; submit returns at once."""
    dead = f"http://127.0.0.1:{free_port()}/"
    workers.append(worker := NotifierWorker(WebhookNotifier(url=dead, timeout=1), retries=2, backoff=0.05))
    with caplog.at_level(logging.INFO, logger="metricbus.alerts"):
        for _ in range(3):
            worker.submit(ALERT)
        wait_until(lambda: worker.failed == 3, 20, "three alerts given up")
    assert worker.sent == 0
    assert any("gave up on alert grad-explosion/firing after 3 attempts" in r.getMessage() for r in caplog.records)
    assert all("secret" not in r.getMessage() for r in caplog.records)  # the URL's query is not logged


def test_command_runs_a_program_with_the_alert_in_its_environment(
    tmp_path: Path, workers: list[NotifierWorker]
) -> None:
    """The command notifier runs an argv (no shell: '$(…)' stays literal) with METRICBUS_ALERT_* set."""
    out = tmp_path / "env.json"
    script = (
        "import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items()"
        " if k.startswith('METRICBUS_ALERT_')}}, open(sys.argv[1], 'w'))"
    )
    argv = [sys.executable, "-c", script, str(out), "$(touch pwned)"]
    workers.append(worker := NotifierWorker(CommandNotifier(argv=argv)))
    worker.submit(ALERT)
    wait_until(lambda: worker.sent == 1, 20, "the command to finish")
    seen = json.loads(out.read_text())
    assert seen["argv"] == [str(out), "$(touch pwned)"]
    assert not (tmp_path / "pwned").exists()
    env = seen["env"]
    assert env["METRICBUS_ALERT_RULE"] == "grad-explosion"
    assert env["METRICBUS_ALERT_VALUE"] == "42.0"
    assert env["METRICBUS_ALERT_RUN"] == "ppo-1"
    assert json.loads(env["METRICBUS_ALERT_JSON"]) == ALERT


def test_command_that_fails_is_retried_then_given_up(tmp_path: Path, workers: list[NotifierWorker]) -> None:
    """A program exiting non-zero counts as a failed delivery, retried, then given up."""
    count = tmp_path / "runs"
    script = "import sys; f = open(sys.argv[1], 'a'); f.write('x'); sys.exit(3)"
    argv = [sys.executable, "-c", script, str(count)]
    workers.append(worker := NotifierWorker(CommandNotifier(argv=argv), retries=1, backoff=0.05))
    worker.submit(ALERT)
    wait_until(lambda: worker.failed == 1, 20, "the command to be given up")
    assert count.read_text() == "xx"


def test_email_through_a_real_smtp_server(workers: list[NotifierWorker], monkeypatch: pytest.MonkeyPatch) -> None:
    """The email notifier delivers a message with the alert in subject and body to an SMTP server."""
    from aiosmtpd.controller import Controller

    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        notifier = EmailNotifier(to=["oncall@example.org"], sender="bus@example.org", host="127.0.0.1", port=port)
        workers.append(worker := NotifierWorker(notifier))
        worker.submit(ALERT)
        wait_until(lambda: received, 20, "the e-mail")
    finally:
        controller.stop()
    envelope = received[0]
    assert envelope.mail_from == "bus@example.org"
    assert envelope.rcpt_tos == ["oncall@example.org"]
    text = envelope.content.decode()
    assert "Subject: [metricbus] [error] FIRING grad-explosion" in text
    assert "threshold: 10.0" in text


def test_log_notifier_writes_one_json_line(caplog: pytest.LogCaptureFixture, workers: list[NotifierWorker]) -> None:
    """The log notifier logs the alert as one JSON object at the alert's severity."""
    workers.append(worker := NotifierWorker(LogNotifier()))
    with caplog.at_level(logging.INFO, logger="metricbus.alerts"):
        worker.submit(ALERT)
        wait_until(lambda: worker.sent == 1, 10, "the log line")
    record = next(r for r in caplog.records if r.getMessage().startswith("alert "))
    assert record.levelno == logging.ERROR
    assert json.loads(record.getMessage().removeprefix("alert ")) == ALERT


def test_min_severity_and_states_filter_what_a_notifier_gets(hook: Hook, workers: list[NotifierWorker]) -> None:
    """min_severity and states pick which alerts a notifier is sent."""
    workers.append(worker := NotifierWorker(WebhookNotifier(url=hook.url), min_severity="critical", states=("firing",)))
    worker.submit(ALERT)  # error < critical
    worker.submit({**ALERT, "severity": "critical", "state": "resolved"})
    worker.submit({**ALERT, "severity": "critical", "rule": "nan"})
    wait_until(lambda: worker.sent == 1 and worker.idle(), 10, "one delivery")
    assert [b["rule"] for b in hook.bodies] == ["nan"]


def test_dead_notifier_does_not_delay_evaluation() -> None:
    """The engine raises alerts while its only notifier's endpoint is down (it just queues)."""
    dead = f"http://127.0.0.1:{free_port()}/"
    rules = [{"name": "hi", "kind": "threshold", "select": {"metric": "x"}, "threshold": 0, "repeat": 0}]
    engine = AlertEngine(
        rules=rules, notify=[{"type": "webhook", "url": dead, "retries": 1, "backoff": 0.05}], restore=False
    )
    try:
        batch = [Message("metrics", "r", "n", "p", i, 1000.0 + i, i, {"x": 1}) for i in range(20)]
        engine.handle(batch)
        assert len(engine.recent) == 20  # every sample re-fires with repeat 0, none waited on the webhook
    finally:
        engine.close()
