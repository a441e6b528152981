"""`folio user ...`: accounts of a library shared by several people (a Typer sub-app).

`folio user add NAME` asks for a password (twice; `--password-stdin` reads one line instead), and
from then on `folio serve` asks everyone to sign in, and each login sees only its own documents.
`folio --user NAME ingest ...` adds documents to that user's library from the command line.
`folio user key NAME` prints a new API key for `folio serve --api` (shown once; only its hash is
kept, and a new key replaces the old one).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.cli_globals import FolioTyper
from pipeline.library.owners import add_user, issue_api_key, list_users, remove_user, set_password

user_app = FolioTyper(
    name="user",
    help="Accounts of a shared library: each user sees only their own documents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_console = Console()
_err = Console(stderr=True, soft_wrap=True)

_PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
]


def _library():
    from app.cli import open_folio  # NOTE: app.cli mounts this sub-app; imported late, not at load

    return open_folio()


def _fail(message: str) -> typer.Exit:
    _err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(1)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@user_app.command("add")
def add_command(name: str, password_stdin: _PasswordStdin = False) -> None:
    """Create an account that can sign in to `folio serve`."""
    password = _password(password_stdin)
    folio = _library()
    try:
        add_user(folio.library, name, password)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    finally:
        folio.close()
    _console.print(f"added user {name}", highlight=False)


@user_app.command("passwd")
def passwd_command(name: str, password_stdin: _PasswordStdin = False) -> None:
    """Change a user's password."""
    password = _password(password_stdin)
    folio = _library()
    try:
        set_password(folio.library, name, password)
    except (LookupError, ValueError) as exc:
        raise _fail(str(exc)) from None
    finally:
        folio.close()
    _console.print(f"changed the password of {name}", highlight=False)


@user_app.command("key")
def key_command(name: str) -> None:
    """Print a new API key for `folio serve --api` (replaces the user's earlier key)."""
    folio = _library()
    try:
        key = issue_api_key(folio.library, name)
    except LookupError as exc:
        raise _fail(str(exc)) from None
    finally:
        folio.close()
    # NOTE: the key alone on stdout (scripts capture it); the advice goes to stderr.
    _err.print(
        f"API key of {name} (shown once; `folio user key {name}` again replaces it):",
        highlight=False,
    )
    typer.echo(key)


@user_app.command("list")
def list_command() -> None:
    """Users and how many documents each owns."""
    folio = _library()
    try:
        users = list_users(folio.library)
    finally:
        folio.close()
    if not users:
        _console.print("no users: every document belongs to the local user", highlight=False)
        return
    table = Table("user", "documents", "created")
    for user in users:
        table.add_row(user.name, str(user.documents), f"{user.created:%Y-%m-%d %H:%M}")
    _console.print(table)


@user_app.command("remove")
def remove_command(name: str) -> None:
    """Delete an account that owns no documents (delete them first: `folio --user NAME delete ID`)."""
    folio = _library()
    try:
        remove_user(folio.library, name)
    except (LookupError, ValueError) as exc:
        raise _fail(str(exc)) from None
    finally:
        folio.close()
    _console.print(f"removed user {name}", highlight=False)
