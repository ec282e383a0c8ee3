"""Credentials never reach logs, events or ``--json``: the one :func:`redact` for URLs, and the
secret values a URL carries (:func:`url_secrets`) for a log filter to hide wherever else
they turn up (a third-party library logging a URL it was given, at DEBUG).

A URL carries credentials in two places: the password of its user information
(``amqp://user:pw@host/``) and query parameters with a secret-like name (``?password=``,
``sslpassword=``, ``secret=``, ``token=``, ``access_key=``, ...: any name containing
``pass``, ``pwd``, ``secret``, ``token``, ``credential``, ``auth``, ``key`` or
``signature``).  Both become ``***``.  A file path in a ``sslkey=`` or ``keyfile=``
parameter is hidden too: being wrong that way costs a log reader a path, never a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MASK = "***"

_SECRET_NAME = re.compile(r"pass|pwd|secret|token|credential|auth|key|signature", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"(?P<name>[^&=?#;]+)=(?P<value>[^&#;]*)")
_USERINFO = re.compile(r"(?<=://)[^/?#@]*@")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter named ``name`` holds a credential (by its name)."""
    return _SECRET_NAME.search(name) is not None


def redact(url: str) -> str:
    """``url`` with its password and every secret-like query value replaced by ``***``.

    Everything else (scheme, user name, host, path, other parameters) stays, so the result
    still says which server and database are meant.  An unparseable URL loses its whole
    user information, and its secret-like parameters as well.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. an unclosed IPv6 bracket: redact by pattern
        return _redact_query(_USERINFO.sub(MASK + "@", url, count=1))
    netloc, query = parts.netloc, _redact_query(parts.query)
    if password is None and query == parts.query:
        return url  # nothing to hide: the URL exactly as given
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:{MASK}@{host}"
    return parts._replace(netloc=netloc, query=query).geturl()


def _redact_query(query: str) -> str:
    def hide(match: re.Match[str]) -> str:
        name = match.group("name")
        return f"{name}={MASK}" if is_secret_name(unquote(name)) else match.group(0)

    return _QUERY_PAIR.sub(hide, query)


def url_secrets(url: str | None) -> list[str]:
    """The secret values ``url`` carries (its password, its secret-like query values), as
    they appear in the URL and decoded; empty for None or a URL without any."""
    if not url:
        return []
    found: list[str] = []
    try:
        parts = urlsplit(url)
        password = parts.password
        query = parse_qsl(parts.query, keep_blank_values=False)
    except ValueError:
        match = _USERINFO.search(url)
        userinfo = match.group(0)[:-1] if match else ""
        password = userinfo.split(":", 1)[1] if ":" in userinfo else None
        query = []
    if password:
        found += [password, unquote(password)]
    for name, value in query:
        if is_secret_name(name) and value:
            found += [value, quote(value, safe=""), quote(value)]
    return _distinct(found)


def _distinct(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


__all__ = ["MASK", "is_secret_name", "redact", "url_secrets"]
