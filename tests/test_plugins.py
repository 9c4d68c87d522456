"""The plugin API: resolving a sink's ``type``, checking its options, listing sinks, and
using the README's example sink and the ``examples/`` entry-point package from YAML."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support import REPO, Stack, wait_until

from bus.config import ConfigError, parse_config
from bus.publisher import Publisher
from bus.registry import resolve

EXAMPLE_PACKAGE = REPO / "examples" / "metricbus-example-sink"


def readme_blocks(section: str) -> dict[str, list[str]]:
    """The fenced code blocks of one README section, by language, exactly as printed."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    blocks: dict[str, list[str]] = {}
    for lang, code in re.findall(r"```(\w*)\n(.*?)```", body, flags=re.S):
        blocks.setdefault(lang, []).append(code)
    return blocks


def config_error(sinks: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"sinks": sinks}, "my.yaml")
    return str(info.value)


def test_a_wrong_option_names_the_sink_the_option_and_the_accepted_ones() -> None:
    """An unknown option, a missing required one and a wrongly typed one fail at load, naming all three."""
    assert config_error({"mysink": {"type": "csv", "colums": 3}}) == (
        "my.yaml: sinks.mysink.colums: option 'colums' is not accepted by CsvSink "
        "(accepted: root, kinds, max_columns, max_open_files)"
    )
    assert config_error({"t": {"type": "tensorboard", "flush_secs": "soon"}}) == (
        "my.yaml: sinks.t.flush_secs: option 'flush_secs' of TensorBoardSink: expected float, got 'soon'"
    )
    missing = config_error({"d": {"type": "sinks_for_tests:DyingSink", "record": "r"}})
    assert missing.startswith("my.yaml: sinks.d: option 'marker' is required by DyingSink")


def test_a_type_resolves_to_a_builtin_a_module_class_or_says_what_is_known() -> None:
    """Built-in names and module:Class resolve; an unknown name lists the known ones; a non-sink is refused."""
    assert resolve("csv").__name__ == "CsvSink"
    assert resolve("sinks_for_tests:RaisingSink").__name__ == "RaisingSink"
    unknown = config_error({"x": {"type": "tensorbored"}})
    assert unknown.startswith("my.yaml: sinks.x.type: unknown sink type 'tensorbored'; known: ")
    assert "tensorboard" in unknown and "module:Class" in unknown
    not_a_sink = config_error({"x": {"type": "pathlib:Path"}})
    assert "pathlib:Path lacks handle" in not_a_sink
    assert "cannot import 'no_such_module'" in config_error({"x": {"type": "no_such_module:Sink"}})


def test_metricbus_sinks_lists_builtins_with_their_options() -> None:
    """``metricbus sinks`` prints every built-in with its origin, summary and typed options."""
    result = subprocess.run(
        [sys.executable, "-m", "metricbus", "sinks"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("jsonl", "tensorboard", "prometheus", "csv", "console", "mlflow", "wandb"):
        assert re.search(rf"^{name}  \[built-in\] ", out, flags=re.M), name
    assert "    port: int = 9109" in out
    assert "    kinds: Sequence[str] = ('metrics', 'episode', 'system')" in out


def test_readme_example_sink_runs_from_yaml_exactly_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's sink and YAML, copied verbatim, run under ``metricbus up`` and do what it says."""
    blocks = readme_blocks("Write your own sink")
    (tmp_path / "my_sinks.py").write_text(blocks["python"][0])
    sinks = yaml.safe_load(blocks["yaml"][0])["sinks"]
    with Stack(tmp_path, sinks=sinks) as stack, Publisher(stack.frontend, run="readme") as pub:
        for step, loss in enumerate([0.3, 0.7, 0.4, 0.9]):
            pub.metrics({"train/value_loss": loss}, step=step)
        pub.flush()
        wait_until(lambda: len(stack.records("readme", "metrics")) == 4, 15, "the JSONL record")
    # `with` stopped the stack: every sink has flushed and closed
    assert (tmp_path / "alarms.txt").read_text() == (
        "readme step=1 train/value_loss=0.7\nreadme step=3 train/value_loss=0.9\n"
    )
    # The console script (not `python -m`) finds my_sinks.py in the directory it runs in, too.
    script = Path(sys.executable).with_name("metricbus")
    check = subprocess.run([str(script), "check", str(stack.config_path)], capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    error = config_error({"alarm": {"type": "my_sinks:LossAlarm", "treshold": 1}})
    printed = next(b for b in blocks[""] if "config error" in b).strip()
    assert printed == f"metricbus: config error: {error}"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The examples/ package built and installed, offline, into a directory put on PYTHONPATH."""
    target = tmp_path_factory.mktemp("plugin-site")
    build = tmp_path_factory.mktemp("plugin-build")
    # A copy to build from, so the build leaves nothing (build/, *.egg-info) in the source tree.
    source = build / "src"
    subprocess.run(["cp", "-r", str(EXAMPLE_PACKAGE), str(source)], check=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    yield target


def plugin_env(target: Path) -> dict[str, str]:
    # no empty entry: an empty PYTHONPATH element would put the working directory on sys.path
    return {"PYTHONPATH": os.pathsep.join(p for p in [str(target), os.environ.get("PYTHONPATH")] if p)}


def test_metricbus_sinks_lists_an_installed_plugin(installed_plugin: Path) -> None:
    """An installed entry point appears in ``metricbus sinks`` as a plugin, with its options."""
    result = subprocess.run(
        [sys.executable, "-m", "metricbus", "sinks"],
        capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, **plugin_env(installed_plugin)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "run_summary  [plugin (metricbus-example-sink)] metricbus_example_sink:RunSummarySink" in result.stdout
    assert "    metric: str = 'rollout/ep_rew_mean'" in result.stdout


def test_entry_point_plugin_runs_from_yaml_by_name(installed_plugin: Path, tmp_path: Path) -> None:
    """``type: run_summary`` finds the installed example plugin through its entry point under ``metricbus up``."""
    summary = tmp_path / "summary.json"
    sinks = {
        "jsonl": {"type": "jsonl", "root": str(tmp_path / "logs")},
        "summary": {"type": "run_summary", "topics": ["metrics/"], "path": str(summary), "metric": "reward"},
    }
    with (
        Stack(tmp_path, sinks=sinks, env=plugin_env(installed_plugin)) as stack,
        Publisher(stack.frontend, run="plug") as pub,
    ):
        for step, reward in enumerate([1.0, 5.0, 3.0]):
            pub.metrics({"reward": reward}, step=step)
        pub.flush()
        wait_until(lambda: len(stack.records("plug", "metrics")) == 3, 15, "the JSONL record")
    written = json.loads(summary.read_text())
    assert written["runs"]["plug"] == {"messages": 3, "last_step": 2, "latest": 3.0, "best": 5.0}
    check = subprocess.run(
        [sys.executable, "-m", "metricbus", "check", str(stack.config_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, env={**os.environ, **plugin_env(installed_plugin)},
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
