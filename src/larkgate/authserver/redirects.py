"""Which redirect URIs a client may register, and which requested ones match a registration.

A code is only as safe as the place it is sent to, so registration accepts three kinds:
``https`` anywhere, ``http`` on a loopback host only (a native app's local listener, RFC 8252
section 7.3), and private-use schemes the operator listed. Fragments, credentials, script and
data schemes, and anything a browser might parse differently from us are refused outright.
A requested URI must equal a registered one, except that a loopback one may name any port.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_URI_LENGTH = 2000
MAX_REDIRECT_URIS = 10
# Printable ASCII only, no backslash: browsers read "\" as "/" in http(s) URLs, which would
# let "http://evil\@127.0.0.1" mean one host to us and another to the browser.
_PLAIN = re.compile(r"[\x21-\x5b\x5d-\x7e]+")


class RedirectRefused(ValueError):
    """The redirect URI may not be registered; the message says why, for the client."""


def check_registrable(uri: str, private_schemes: Sequence[str]) -> str:
    if not uri or len(uri) > MAX_URI_LENGTH or _PLAIN.fullmatch(uri) is None:
        raise RedirectRefused("redirect URI must be plain printable ASCII of sane length")
    if "#" in uri:
        raise RedirectRefused("redirect URI must not contain a fragment")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme:
        raise RedirectRefused("redirect URI must be absolute")
    if scheme in ("http", "https"):
        _check_web(parts, scheme)
    elif scheme not in private_schemes:
        raise RedirectRefused(
            f"redirect URI scheme {scheme!r} is not allowed: use https, or http on loopback"
        )
    return uri


def _check_web(parts: SplitResult, scheme: str) -> None:
    if "@" in parts.netloc:
        raise RedirectRefused("redirect URI must not carry credentials")
    try:
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise RedirectRefused("redirect URI has an invalid port") from None
    if not host:
        raise RedirectRefused("redirect URI has no host")
    if scheme == "http" and host not in LOOPBACK_HOSTS:
        raise RedirectRefused("plain http redirect URIs must point at a loopback address")


def sole(registered: Sequence[str]) -> str:
    """The redirect URI a request may leave out: only one that cannot be ambiguous."""
    return registered[0] if len(registered) == 1 else ""


def is_loopback(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme.lower() == "http" and (parts.hostname or "") in LOOPBACK_HOSTS


def matches(registered: Sequence[str], requested: str) -> bool:
    """Exact match, or the same loopback URI on another port (native apps pick a free one)."""
    if requested in registered:
        return True
    if not is_loopback(requested):
        return False
    asked = urlsplit(requested)
    for uri in registered:
        known = urlsplit(uri)
        if (
            is_loopback(uri)
            and known.hostname == asked.hostname
            and known.path == asked.path
            and known.query == asked.query
            and known.username is None
            and asked.username is None
        ):
            return True
    return False
