"""Running the ``userpath`` command in-process, as the CLI tests do."""

from __future__ import annotations

from click.testing import CliRunner, Result

from userpath_worker.cli import cli


def run(*args: str, input: str | None = None) -> Result:
    """``input``: what the command reads on standard input."""
    return CliRunner().invoke(cli, list(args), prog_name="userpath", input=input)


def ok(*args: str, input: str | None = None) -> Result:
    result = run(*args, input=input)
    assert result.exit_code == 0, result.output
    return result
