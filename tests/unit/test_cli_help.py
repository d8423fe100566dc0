"""Every argument and every subcommand of `lamina` says what it is for in --help."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from lamina.backend.cli.main import build_parser


def _walk(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def _missing_help(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            described = {choice.dest for choice in action._choices_actions if choice.help}
            missing += [
                f"{path} {name}: no help" for name in action.choices if name not in described
            ]
            continue
        if action.help is None or not str(action.help).strip():
            what = "/".join(action.option_strings) or action.metavar or action.dest
            missing.append(f"{path}: {what} has no help")
    return missing


def test_every_argument_has_help() -> None:
    parsers = list(_walk(build_parser(), "lamina"))
    assert len(parsers) > 30  # the walk reached the subcommands of the subcommands
    missing = [line for path, parser in parsers for line in _missing_help(parser, path)]
    assert not missing, "\n".join(missing)


def test_the_walk_sees_an_argument_without_help() -> None:
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers()
    child = sub.add_parser("child", help="a child")
    child.add_argument("--bare")
    sub.add_parser("silent")
    missing = [line for path, p in _walk(parser, "x") for line in _missing_help(p, path)]
    assert missing == ["x silent: no help", "x child: --bare has no help"]
