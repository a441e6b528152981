"""The global options of `folio`: `--library/-l`, `--config`, `--user/-u`, `--verbose/-v`.

Every group and command of the CLI takes them, so they work where users type them: before the
subcommand (`folio -l lib docs`) or after it, at any depth (`folio serve --library lib`,
`folio eval qa FILE -l lib`, `folio user list -l lib`). Where both are given, the one after wins.
Use `FolioTyper` for every Typer app of the CLI; commands read the values from `GlobalOptions`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

_PANEL = "Global options"  # their own section in `--help`, after the command's options
_LEVELS = [logging.WARNING, logging.INFO, logging.DEBUG]


class GlobalOptions:
    """This invocation's values (the root command resets them, so each run starts clean)."""

    library: Path | None = None
    config: str | None = None
    user: str | None = None
    verbose: int = 0


def log_level(verbose: int) -> int:
    """The logging level `-v` given `verbose` times asks for."""
    return _LEVELS[min(verbose, len(_LEVELS) - 1)]


def _store(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> None:
    """Keep a global option's value: the root command's always, a subcommand's when typed there
    (none of them can be typed as None or, for -v, 0)."""
    if ctx.parent is not None and value in (None, 0):
        return
    name = param.name.removeprefix("global_")
    setattr(GlobalOptions, name, value)
    if name == "verbose" and ctx.parent is not None:
        # The root's level is set with the log format, by the CLI's callback; this one comes later.
        logging.getLogger().setLevel(log_level(value))


def _option(*decls: str, **kwargs: Any) -> Any:
    """A global option: stored as parsed, never passed to a command's function."""
    return typer.Option(*decls, callback=_store, expose_value=False, rich_help_panel=_PANEL, **kwargs)


def _declared(
    global_library: Annotated[
        Path | None, _option("--library", "-l", help="Library folder (FOLIO_LIBRARY).")
    ] = None,
    global_config: Annotated[
        str | None, _option("--config", help="Preset name or JSON settings file.")
    ] = None,
    global_user: Annotated[
        str | None,
        _option(
            "--user",
            "-u",
            help="Act as this user of a shared library (FOLIO_USER); default: the local user.",
        ),
    ] = None,
    global_verbose: Annotated[
        int, _option("--verbose", "-v", count=True, help="More logging (-vv: debug).")
    ] = 0,
) -> None:
    """Declares the global options for Typer to build (see `_options`); never called."""


def _options() -> list:
    """New option objects for one command, built by Typer from `_declared`'s parameters."""
    template = typer.Typer(add_completion=False)
    template.command()(_declared)
    return list(typer.main.get_command(template).params)


class GlobalOptionsCommand(TyperCommand):
    """A command that also takes the global options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_options())


class GlobalOptionsGroup(TyperGroup):
    """A group (`folio`, `folio eval`, `folio user`) that also takes the global options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_options())


class FolioTyper(typer.Typer):
    """A Typer app whose group and commands all take the global options."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=GlobalOptionsGroup, **kwargs)

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any):  # noqa: ANN201 - Typer's decorator
        return super().command(name, cls=cls or GlobalOptionsCommand, **kwargs)
