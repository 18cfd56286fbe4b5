"""How `broker` commands fail: every error one `error: ...` line on stderr, with the exit
code broker._exits gives it, applied once for every command by the `broker` group."""

from __future__ import annotations

import json
from typing import Any

import click

from broker._exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, exit_code
from broker._exits import error_line as _error_line
from broker.errors import first_line

EXIT_CODES_HELP = f"""\b
Exit codes (enqueue, jobs, queues, stats, workers):
  {EXIT_OK}  done
  {EXIT_FAILED}  refused or failed: job not found, cannot cancel/retry in its state,
     idempotency conflict, database unreachable or erroring
  {EXIT_BAD_INPUT}  bad input: unknown option or value, bad JSON, invalid job, bad --file line;
     a database not migrated (run `broker migrate`)"""


# Where the `broker` group notes that the command line asked for --json (ctx.meta).
JSON_ERRORS = "broker.json_errors"


def _show(message: str, code: int, as_json: bool) -> None:
    """An error on stderr: the `error: ...` line, or with --json one JSON object
    `{"error": message, "exit_code": code}` on one line (stdout stays for results)."""
    if as_json:
        click.echo(json.dumps({"error": message, "exit_code": code}), err=True)
    else:
        click.echo(_error_line(message), err=True)


class InputError(click.UsageError):
    """Bad input to a command: `error: ...` on one line, exit code 2."""

    exit_code = EXIT_BAD_INPUT
    as_json = False

    def show(self, file: Any = None) -> None:
        _show(self.format_message(), self.exit_code, self.as_json)


class CommandFailed(click.ClickException):
    """The broker refused or failed: `error: ...` on one line, exit code 1 (or `code`)."""

    exit_code = EXIT_FAILED
    as_json = False

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            # click declares exit_code on the class; the table decides it per error.
            self.exit_code = code  # type: ignore[misc, unused-ignore]  # ClassVar in click 8.5+

    def show(self, file: Any = None) -> None:
        _show(self.format_message(), self.exit_code, self.as_json)


class Interrupted(CommandFailed):
    """Ctrl-C: exit code 130, as a shell reports SIGINT."""

    exit_code = EXIT_INTERRUPTED


def reported(exc: BaseException) -> click.ClickException | None:
    """`exc` as the one-line error its exit code calls for, or None when broker._exits has
    no rule for it (a bug: it keeps its traceback)."""
    code = exit_code(exc)
    if code is None:
        return None
    if code == EXIT_BAD_INPUT:
        return InputError(first_line(exc))
    return CommandFailed(first_line(exc), code)


class BrokerGroup(click.Group):
    """The `broker` group: whatever any of its commands raises goes through the one table
    here, as JSON when the command line has --json. Its own usage errors (an unknown
    command) keep click's form."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        options = args[: args.index("--")] if "--" in args else args
        ctx.meta[JSON_ERRORS] = "--json" in options
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        as_json = bool(ctx.meta.get(JSON_ERRORS))
        try:
            return super().invoke(ctx)
        except (InputError, CommandFailed) as exc:
            exc.as_json = as_json
            raise
        except Exception as exc:
            failure = reported(exc)
            if failure is None:
                raise
            if isinstance(failure, InputError | CommandFailed):
                failure.as_json = as_json
            raise failure from None


# `broker jobs` alone shows the group's help (and exits 2) rather than an error line;
# click < 8.2 has no such exception and exits 0 after the help.
_HELP_INSTEAD: tuple[type[click.UsageError], ...] = tuple(
    getattr(click.exceptions, name)
    for name in ("NoArgsIsHelpError",)
    if hasattr(click.exceptions, name)
)
_PASS_THROUGH: tuple[type[click.UsageError], ...] = (InputError, *_HELP_INSTEAD)


def _one_line_usage(exc: click.UsageError) -> InputError:
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    return InputError(exc.format_message() + where)


class OneLineCommand(click.Command):
    """A command whose usage errors are one `error:` line (exit code 2)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except _PASS_THROUGH:
            raise
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None


class OneLineGroup(OneLineCommand, click.Group):
    """A group whose usage errors (and its commands') are one `error:` line (exit code 2).

    make_context comes from OneLineCommand, whose super() is click.Group's here."""

    command_class = OneLineCommand

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except _PASS_THROUGH:
            raise
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None
