"""The command line's shape: usage errors, help, and docs/cli.md naming exactly the
options each command has."""

from __future__ import annotations

import argparse
import pathlib
import re

import pytest

from lbclient.cli import build_parser, main

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "cli.md"
COMMANDS = ("demo", "probe", "check-config", "simulate")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions for o in a.option_strings if o.startswith("--")} - {
        "--help"}


@pytest.mark.parametrize("argv", [[], ["nope"], ["probe"], ["check-config"],
                                  ["demo", "--duration", "x"],
                                  ["demo", "--policy", "a", "--config", "b"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: lbclient" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in options(subparsers()[command]):
        assert option in text, (command, option)


def test_docs_name_exactly_the_options_of_each_command() -> None:
    docs = DOCS.read_text()
    parsers = subparsers()
    assert set(parsers) == set(COMMANDS)
    for command in COMMANDS:
        # the synopsis: the fenced block right under "## `lbclient <command>`"
        section = docs.split(f"## `lbclient {command}`", 1)[1]
        synopsis = section.split("```", 2)[1]
        documented = set(re.findall(r"--[a-z][a-z-]*", synopsis))
        assert documented == options(parsers[command]), command


def test_keyboard_interrupt_is_exit_130(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from lbclient.cli import check_config

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(check_config, "run", interrupted)
    assert main(["check-config", "-"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
