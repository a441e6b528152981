"""The front ends' settings (`pipeline.settings`) and the web app's address and login checks."""

from __future__ import annotations

import ipaddress

from pipeline.settings import PRESETS, ServeConfig, Settings

__all__ = ["PRESETS", "ServeConfig", "Settings", "is_loopback", "parse_auth"]


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """("user", "password") from "user:password".

    Raises:
        ValueError: Not of the form user:password.
    """
    if auth is None:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise ValueError("auth must look like user:password (both parts non-empty)")
    return user, password
