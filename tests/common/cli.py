"""Running the ``userpath`` command in-process, as the CLI tests do."""

from __future__ import annotations

from click.testing import CliRunner, Result

from userpath_worker.cli import cli


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="userpath")


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result
