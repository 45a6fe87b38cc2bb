"""The command line a newcomer meets: the installed ``oceanus`` script's help,
version and exit statuses."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from oceanus import cli

OCEANUS = Path(sys.executable).parent / "oceanus"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(OCEANUS), *args], capture_output=True, text=True, timeout=60, check=False)


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_wired() -> None:
    assert set(subparsers()) == set(cli.COMMANDS)


def test_help_is_a_whole_sentence_with_exit_statuses() -> None:
    res = run("--help")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert cli.DESCRIPTION in out
    assert "``" not in out  # no RST markup
    for command in cli.COMMANDS:
        assert re.search(rf"\n    {command}\s+\S", out), command  # listed with its summary
    for action in cli.build_parser()._actions:
        assert action.help, action
    assert "exit status:" in out
    for line in (
        "  0    success",
        "  1    failed while running",
        "  2    usage or config error",
        "  3    oceanus collector only",
        "  130  interrupted",
    ):
        assert line in out


def test_version() -> None:
    res = run("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"oceanus {importlib.metadata.version('oceanus')}\n"


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_command_help_has_an_example_and_help_for_every_option(command: str) -> None:
    res = run(command, "--help")
    assert res.returncode == 0, res.stderr
    assert "\nexample" in res.stdout, res.stdout
    assert f"\n  oceanus {command}" in res.stdout, res.stdout
    parser = subparsers()[command]
    assert parser.description
    shown = " ".join(res.stdout.split())
    for action in parser._actions:
        name = (action.option_strings or [action.dest])[0]
        assert action.help, f"oceanus {command} {name} has no help text"
        assert action.help.strip(), f"oceanus {command} {name} has no help text"
        text = action.help % {**vars(action), "prog": parser.prog}  # as argparse expands it
        assert " ".join(text.split()) in shown, name


def test_a_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["query"])  # the SQL is missing
    assert exc.value.code == 2
    assert "the following arguments are required: sql" in capsys.readouterr().err


def test_an_operational_failure_exits_1_and_a_config_error_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["query", "--data-dir", str(tmp_path), "SELECT 1"]) == 1  # no warehouse there
    assert "no warehouse at" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[collector]\nnope = 1\n")
    assert cli.main(["check-config", "--config", str(bad)]) == 2
    assert "unknown field `nope`" in capsys.readouterr().err
