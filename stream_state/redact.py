"""Hide credentials before anything is shown.

Stream URIs carry camera passwords (``rtsp://admin:secret@cam``) and database
URLs carry database passwords. They are stored because they are needed, but
every representation meant for people or logs goes through here first.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# Query parameters that commonly carry secrets in camera and streaming URLs:
# any name holding one of these words (access_token, api_key, client_secret,
# X-Amz-Signature...). A harmless name that holds one is masked too: more is
# masked, never less.
_SECRET_QUERY = re.compile(
    r"(?i)([?&][^=&#\s]*?(?:password|passwd|pass|pwd|secret|token|key|auth|passphrase|streamid"
    r"|signature|sig|credential)[^=&#\s]*=)[^&#]*"
)


_SCHEME_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def split_userinfo(uri: str) -> tuple[str | None, str]:
    """``(userinfo, uri without it)``; userinfo is None when the URI has none.

    The userinfo ends at the LAST ``@`` (RFC 3986 allows no raw ``@`` in it,
    but passwords hold ``#``, ``?``, ``/``, ``@`` and ``:`` in practice, and
    cameras accept them). ``urlsplit`` would cut such a password at its
    ``#`` or ``/`` and take the rest for a fragment or a path, which both
    shows it and misreads the host. An ``@`` later in the path makes the
    split over-cautious (more is masked), never leaky.
    """
    match = _SCHEME_PREFIX.match(uri)
    if not match:
        return None, uri
    after = uri[match.end() :]
    ats = [i for i, ch in enumerate(after) if ch == "@"]
    if not ats:
        return None, uri
    # The last "@" that a host follows; an "@" in the path is followed by
    # text that is no host[:port] (or, if it looks like one, more is masked).
    chosen = ats[-1]
    for at in reversed(ats):
        hostinfo = re.split(r"[/?#]", after[at + 1 :], maxsplit=1)[0]
        if hostinfo and _HOSTINFO.fullmatch(hostinfo):
            chosen = at
            break
    return after[:chosen], uri[: match.end()] + after[chosen + 1 :]


_HOSTINFO = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s\[\]:/?#@]+)?(:[0-9]{0,5})?")


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password (and secret query values) masked.

    The user name stays visible: operators need to see which account a camera
    uses, and it is not a secret on its own.
    """
    if not isinstance(uri, str):
        return repr(type(uri))
    userinfo, rest = split_userinfo(uri)
    if userinfo is None and not _SCHEME_PREFIX.match(uri):
        return redact_text(uri)  # not "scheme://...": mask whatever looks like a credential
    if userinfo is not None:
        user, has_password, _ = userinfo.partition(":")
        scheme_end = _SCHEME_PREFIX.match(rest).end()  # type: ignore[union-attr]
        shown_user = f"{user}:{MASK}@" if has_password else f"{user}@"
        rest = rest[:scheme_end] + shown_user + rest[scheme_end:]
    # Rewritten as text, not rebuilt with urlunsplit: that would turn
    # sqlite:////abs.db into sqlite://abs.db (an empty host is dropped).
    return _SECRET_QUERY.sub(lambda m: m.group(1) + MASK, rest)


# "scheme://user:password@" anywhere in free text (log lines, event messages).
# The password runs to the last "@" of the URI: it may hold "/", "#", "?", "@";
# failing that (a password with a space, as in a URI that was refused for
# it), to the next "@" on the line.
_CREDENTIALS_IN_TEXT = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:]*):(?:\S*@|[^\n@]*?@)")
_SECRET_KEY = re.compile(
    r"(?i)(pass(word|wd|phrase)?|pwd|secret|token|api[_-]?key|private[_-]?key|credential|auth)"
)


def redact_text(text: str) -> str:
    """Mask credentials of any URIs embedded in free text."""
    return _SECRET_QUERY.sub(lambda m: m.group(1) + MASK, _CREDENTIALS_IN_TEXT.sub(rf"\1:{MASK}@", text))


def is_secret_key(key: str) -> bool:
    """Whether a config key looks like it holds a secret (``password``, ``api_key``, ...)."""
    return bool(_SECRET_KEY.search(key))


def redact_data(value: Any) -> Any:
    """A copy of JSON-like data with secret-looking keys masked and URIs in strings redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: MASK if isinstance(k, str) and is_secret_key(k) else redact_data(v) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_data(item) for item in value]
    return value
