"""Owners: several people sharing one library database, each seeing only their own documents.

A user's library is the set of documents they own. Documents with no owner belong to the local
user (`owner=None`: the command line and the web app without accounts), so a library made
before owners existed is the local user's, unchanged. Every read that names documents (listing,
search, answering, deleting, page images) goes through `owner_clause` or `owned_chunk_ids`.

The same PDF uploaded by two users is two documents: an owned document's id is the SHA-256 of
the owner's name and the file's SHA-256, so the parsed rows, images and index entries of one
user's copy never serve the other (and deleting one copy leaves the other).

Accounts live in the `users` table with a scrypt password hash; `folio user add` makes them and
the web app's login checks them (`check_login`). `folio user key NAME` gives an account an API key
for `folio serve --api` (`issue_api_key`); only its SHA-256 is stored, and `api_key_user` finds
the account a request's key belongs to.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import IntegrityError

from storage import Chunk, Document, Library, User

__all__ = [
    "UserInfo",
    "add_user",
    "api_key_user",
    "check_login",
    "check_user_name",
    "has_accounts",
    "has_owners",
    "issue_api_key",
    "list_users",
    "owned_chunk_ids",
    "owned_doc_id",
    "owns_document",
    "owner_clause",
    "owner_id",
    "remove_user",
    "set_password",
]

# NOTE: the name goes into document ids and upload folder names: keep it to safe characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
# scrypt parameters (RFC 7914's interactive-login choice): ~16 MB and ~50 ms per check here.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


@dataclass(frozen=True)
class UserInfo:
    name: str
    documents: int
    created: datetime


def check_user_name(name: str) -> str:
    """`name` if it can name a user.

    Raises:
        ValueError: Empty, too long, or with characters other than letters, digits and . _ @ -.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"user name {name!r} is not allowed: use 1-128 letters, digits and . _ @ - "
            "(starting with a letter or digit)"
        )
    return name


def owned_doc_id(content_sha256: str, owner: str | None) -> str:
    """The id of a document with these bytes (their SHA-256) in `owner`'s library."""
    if owner is None:
        return content_sha256
    return hashlib.sha256(f"{check_user_name(owner)}\n{content_sha256}".encode()).hexdigest()


def owner_id(library: Library, owner: str | None, *, create: bool = False) -> int | None:
    """The users-table id of `owner` (None for the local user).

    Raises:
        LookupError: No such user and `create` is False.
    """
    if owner is None:
        return None
    check_user_name(owner)
    with library.sessions() as session:
        found = session.scalar(select(User.id).where(User.name == owner))
        if found is not None or not create:
            if found is None:
                raise LookupError(f"no user {owner!r} (add one with `folio user add {owner}`)")
            return found
    try:
        with library.sessions() as session, session.begin():
            user = User(name=owner)
            session.add(user)
            session.flush()
            return user.id
    except IntegrityError:
        # NOTE: two first uploads of a new user at once: the loser of the unique name re-reads.
        with library.sessions() as session:
            return session.scalar(select(User.id).where(User.name == owner))


def owner_clause(library: Library, owner: str | None) -> ColumnElement[bool]:
    """A WHERE clause on `Document` that keeps the documents `owner` may see.

    An unknown user owns nothing (the clause matches no row) rather than raising: a request
    from a user who has not uploaded anything yet sees an empty library.
    """
    if owner is None:
        return Document.owner_id.is_(None)
    try:
        return Document.owner_id == owner_id(library, owner)
    except LookupError:
        return Document.id.is_(None)  # matches nothing: ids are never NULL


def owns_document(library: Library, doc_id: str, owner: str | None) -> bool:
    """Whether `doc_id` (a full id) is one of `owner`'s documents (one indexed lookup)."""
    with library.sessions() as session:
        found = session.scalar(
            select(Document.id).where(Document.id == doc_id).where(owner_clause(library, owner))
        )
    return found is not None


def has_owners(library: Library) -> bool:
    """Whether any user exists (if not, every document is the local user's)."""
    with library.sessions() as session:
        return bool(session.scalar(select(func.count(User.id))))


def owned_chunk_ids(library: Library, owner: str | None) -> set[str] | None:
    """Chunk ids `owner` may search, or None when that is every chunk of the library.

    None lets search skip the filter: it is returned for the local user of a library that has
    no users at all, the single-user case.
    """
    if owner is None and not has_owners(library):
        return None
    with library.sessions() as session:
        return set(
            session.scalars(
                select(Chunk.id)
                .join(Document, Document.id == Chunk.doc_id)
                .where(owner_clause(library, owner))
            )
        )


# ---------------------------------------------------------------------------- accounts


def _hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def _verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


@functools.cache
def _dummy_hash() -> str:
    return _hash_password("not a user")


def add_user(library: Library, name: str, password: str) -> None:
    """Create an account (or give a password to a user that uploads made without one).

    Raises:
        ValueError: A bad name, a password shorter than 8 characters, or a user with a
            password already (use `set_password`).
    """
    check_user_name(name)
    _check_password(password)
    with library.sessions() as session, session.begin():
        user = session.scalar(select(User).where(User.name == name))
        if user is not None and user.password_hash:
            raise ValueError(f"user {name!r} exists (change the password with `folio user passwd`)")
        if user is None:
            session.add(User(name=name, password_hash=_hash_password(password)))
        else:
            user.password_hash = _hash_password(password)


def set_password(library: Library, name: str, password: str) -> None:
    """Change a user's password.

    Raises:
        LookupError: No such user.
        ValueError: A password shorter than 8 characters.
    """
    _check_password(password)
    with library.sessions() as session, session.begin():
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise LookupError(f"no user {name!r} (see `folio user list`)")
        user.password_hash = _hash_password(password)


def remove_user(library: Library, name: str) -> None:
    """Delete an account that owns no documents.

    Raises:
        LookupError: No such user.
        ValueError: The user still owns documents (delete them first, as that user).
    """
    with library.sessions() as session, session.begin():
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise LookupError(f"no user {name!r} (see `folio user list`)")
        owned = session.scalar(select(func.count(Document.id)).where(Document.owner_id == user.id))
        if owned:
            raise ValueError(
                f"user {name!r} owns {owned} documents: delete them first "
                f"(`folio --user {name} delete ID`)"
            )
        session.delete(user)


def list_users(library: Library) -> list[UserInfo]:
    """Every user, by name, with how many documents each owns."""
    counts = (
        select(Document.owner_id, func.count().label("n")).group_by(Document.owner_id).subquery()
    )
    query = (
        select(User, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.owner_id == User.id)
        .order_by(User.name)
    )
    with library.sessions() as session:
        return [UserInfo(u.name, n, u.created) for u, n in session.execute(query)]


def check_login(library: Library, name: str, password: str) -> bool:
    """Whether `name` is an account with this password (constant work for unknown names)."""
    with library.sessions() as session:
        stored = session.scalar(select(User.password_hash).where(User.name == name))
    if not stored:
        _verify_password(password, _dummy_hash())  # one scrypt, as for a real account
        return False
    return _verify_password(password, stored)


# A key names what it is for; the rest is 256 random bits (URL-safe base64).
_API_KEY_PREFIX = "folio-"


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue_api_key(library: Library, name: str) -> str:
    """A new API key for user `name`, replacing any earlier one (which stops working).

    The key is returned once and never stored: the users table keeps its SHA-256.

    Raises:
        LookupError: No such user.
    """
    key = _API_KEY_PREFIX + secrets.token_urlsafe(32)
    with library.sessions() as session, session.begin():
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise LookupError(f"no user {name!r} (see `folio user list`)")
        user.api_key_hash = _key_hash(key)
    return key


def api_key_user(library: Library, key: str) -> str | None:
    """The name of the user whose API key `key` is, or None (no such key)."""
    if not isinstance(key, str) or not key.startswith(_API_KEY_PREFIX):
        return None
    with library.sessions() as session:
        return session.scalar(select(User.name).where(User.api_key_hash == _key_hash(key)))


def has_accounts(library: Library) -> bool:
    """Whether any user can sign in (has a password)."""
    with library.sessions() as session:
        return bool(
            session.scalar(select(func.count(User.id)).where(User.password_hash.is_not(None)))
        )


def _check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
