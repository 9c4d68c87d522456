"""Config loading: a good file gives typed sections; a bad one names the file, the key path and what was expected."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO

from bus.config import ConfigError, default_config_path, load_config, parse_config


def write(tmp_path: Path, data: Any, name: str = "bus.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_the_embedded_default_loads() -> None:
    """configs/default.yaml loads: default endpoints, a JSONL sink on every topic, the sampler on."""
    config = load_config(None)
    assert config.path == default_config_path().resolve()
    assert (config.broker.frontend, config.broker.backend) == ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556")
    assert config.broker.hwm > 1000
    jsonl = config.sinks["jsonl"]
    assert (jsonl.type, jsonl.topics, jsonl.options["root"]) == ("jsonl", ("",), "logs")
    assert config.sampler.enabled


def test_a_full_file_maps_onto_typed_sections(tmp_path: Path) -> None:
    """Runner keys go to the SinkConfig, every other key is a constructor option; ints where floats go are fine."""
    path = write(
        tmp_path,
        {
            "broker": {"frontend": "tcp://127.0.0.1:7001", "backend": "ipc:///tmp/x", "hwm": 5000, "stats_interval": 2},
            "sinks": {
                "files": {
                    "type": "jsonl",
                    "topics": ["metrics/", "episode/"],
                    "root": "out",
                    "rotate_bytes": 1000,
                    "batch_size": 50,
                    "flush_interval": 1,
                },
                "mine": {"type": "sinks.jsonl:JsonlSink"},
            },
            "sampler": {"enabled": False, "interval": 5},
            "alerts": {"rules": []},
        },
    )
    config = load_config(path)
    assert config.broker.hwm == 5000 and config.broker.stats_interval == 2.0
    files = config.sinks["files"]
    assert files.topics == ("metrics/", "episode/")
    assert files.options == {"root": "out", "rotate_bytes": 1000}
    assert (files.batch_size, files.flush_interval) == (50, 1.0)
    assert config.sinks["mine"].options == {}
    assert config.sampler.enabled is False and config.sampler.interval == 5.0
    assert config.alerts == {"rules": []}
    assert config.base_dir == tmp_path.resolve()


def test_an_empty_file_means_all_defaults(tmp_path: Path) -> None:
    """An empty YAML document is a config with default broker, no sinks, default sampler."""
    config = load_config(write(tmp_path, ""))
    assert config.sinks == {} and config.broker.frontend == "tcp://127.0.0.1:5555"


JSONL = {"type": "jsonl", "root": "logs"}

# (document, the key path the error must name, a fragment of what was expected)
BAD: dict[str, tuple[Any, str, str]] = {
    "unknown top-level key": ({"brokers": {}}, "brokers", "unknown key"),
    "top level not a map": ([1, 2], "<top level>", "a mapping"),
    "unknown broker key": ({"broker": {"hwm_size": 5}}, "broker.hwm_size", "unknown key"),
    "broker hwm a string": ({"broker": {"hwm": "lots"}}, "broker.hwm", "an integer"),
    "broker hwm a bool": ({"broker": {"hwm": True}}, "broker.hwm", "an integer"),
    "broker hwm zero": ({"broker": {"hwm": 0}}, "broker.hwm", "a positive number"),
    "bad endpoint": ({"broker": {"frontend": "localhost:5555"}}, "broker.frontend", "ZeroMQ endpoint"),
    "broker not a map": ({"broker": "tcp://x:1"}, "broker", "a mapping"),
    "sinks not a map": ({"sinks": ["jsonl"]}, "sinks", "a mapping"),
    "sink without type": ({"sinks": {"j": {"root": "x"}}}, "sinks.j.type", "required"),
    "unknown sink type": ({"sinks": {"j": {"type": "nosuch"}}}, "sinks.j.type", "unknown sink type"),
    "unimportable sink class": ({"sinks": {"j": {"type": "no.such.module:Sink"}}}, "sinks.j.type", "cannot import"),
    "unknown sink option": ({"sinks": {"j": {**JSONL, "rooot": "x"}}}, "sinks.j.rooot", "not accepted by JsonlSink"),
    "sink option wrong type": (
        {"sinks": {"j": {**JSONL, "fsync_interval": "often"}}},
        "sinks.j.fsync_interval",
        "expected float",
    ),
    "topics not a list": ({"sinks": {"j": {**JSONL, "topics": "metrics/"}}}, "sinks.j.topics", "a list"),
    "topic not a string": ({"sinks": {"j": {**JSONL, "topics": ["metrics/", 3]}}}, "sinks.j.topics.1", "topic prefix"),
    "batch_size negative": ({"sinks": {"j": {**JSONL, "batch_size": -1}}}, "sinks.j.batch_size", "positive"),
    "bad sink name": ({"sinks": {"a b": JSONL}}, "sinks.a b", "a sink name"),
    "sampler interval a string": ({"sampler": {"interval": "2s"}}, "sampler.interval", "a number"),
    "unknown sampler key": ({"sampler": {"every": 2}}, "sampler.every", "unknown key"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_file_names_the_file_and_the_key_path(tmp_path: Path, case: str) -> None:
    """Every mistake is a ConfigError "<file>: <key.path>: …expected…", never a traceback from inside."""
    document, key_path, expected = BAD[case]
    path = write(tmp_path, document)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {key_path}: "), text
    assert expected in text, text


def test_yaml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    """Broken YAML names the file and the line and column."""
    path = write(tmp_path, "broker:\n  frontend: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: not valid YAML \(line \d+, column \d+\)"):
        load_config(path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A path that does not exist fails with the path, not FileNotFoundError."""
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_parse_config_uses_the_given_file_name() -> None:
    """Already-parsed data (e.g. built in code) is validated the same way, under the name given."""
    with pytest.raises(ConfigError, match=r"^inline: sinks\.x\.type: "):
        parse_config({"sinks": {"x": {}}}, "inline")


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metricbus", "check", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_metricbus_check_accepts_the_default_config() -> None:
    """`metricbus check configs/default.yaml` (and with no argument) exits 0 and says ok."""
    for args in (["configs/default.yaml"], []):
        result = check(*args)
        assert result.returncode == 0, result.stderr
        assert "ok" in result.stdout


def test_metricbus_check_refuses_a_bad_config_naming_file_and_key(tmp_path: Path) -> None:
    """A wrong key or type makes `metricbus check` exit non-zero with the file and key path on stderr."""
    for document, key_path in (
        ({"sinks": {"jsonl": {**JSONL, "rotate": 5}}}, "sinks.jsonl.rotate"),
        ({"broker": {"hwm": "many"}}, "broker.hwm"),
    ):
        path = write(tmp_path, document)
        result = check(str(path))
        assert result.returncode != 0
        assert f"{path}: {key_path}: " in result.stderr
        assert "Traceback" not in result.stderr
