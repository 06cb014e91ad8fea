"""Every option and argument of every command says what it is for (issue 18).

Walks the real click tree (each lazily registered command loaded) so a new option without help
text fails here, not in a user's first hour.
"""

from __future__ import annotations

import click

from voucherify_ingest.cli import COMMANDS, main


def _walk(command: click.Command, path: str):
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from _walk(command.get_command(ctx, name), f"{path} {name}")


def _every_command():
    ctx = click.Context(main)
    for name in COMMANDS:
        yield from _walk(main.get_command(ctx, name), name)


def test_every_command_and_option_has_help():
    missing = []
    seen = 0
    for path, command in _every_command():
        seen += 1
        if not (command.help or command.short_help):
            missing.append(f"{path}: the command has no help")
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not param.help:
                missing.append(f"{path} {'/'.join(param.opts)}: no help text")
    assert seen > len(COMMANDS)  # the groups' subcommands were walked too
    assert not missing, "\n".join(missing)


def test_every_argument_is_explained_in_its_command_help():
    """click arguments carry no help of their own: the command's text must name each."""
    missing = []
    for path, command in _every_command():
        for param in command.params:
            if isinstance(param, click.Argument) and param.name.upper() not in (command.help or ""):
                missing.append(f"{path} {param.name.upper()}")
    assert not missing, "\n".join(missing)
