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
    # The last "@" that a host[:port] follows; failing that, the last that a
    # port alone follows (a listener's "srt://u:p@:9000"); failing that, the
    # last "@". An "@" in the path is followed by text that is no host (or,
    # if it looks like one, more is masked): "rtsp://u:p@10.0.0.1/@:0" has
    # its host before the path's "@", not an empty one after it.
    hostinfos = [re.split(r"[/?#]", after[at + 1 :], maxsplit=1)[0] for at in ats]
    for pattern in (_HOST_PORT, _PORT_ONLY):
        found = [at for at, hostinfo in zip(ats, hostinfos, strict=True) if pattern.fullmatch(hostinfo)]
        if found:
            chosen = found[-1]
            break
    else:
        chosen = ats[-1]
    return after[:chosen], uri[: match.end()] + after[chosen + 1 :]


_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s\[\]:/?#@]+)(:[0-9]{0,5})?")
_PORT_ONLY = re.compile(r":[0-9]{1,5}")


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
# Each URI (to the next whitespace) first has its userinfo masked as
# redact_uri masks it: the password runs to the last "@" that a host follows,
# so it may hold "/", "#", "?", "@", and an "@" in the path does not take the
# host with it. Then, for a password with a space (a URI that was refused for
# it), to the next "@" on the line; a password already masked is left alone.
_URI_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
_CREDENTIALS_IN_TEXT = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:]*):(?!\*\*\*@)(?:\S*@|[^\n@]*?@)")
_SECRET_KEY = re.compile(
    r"(?i)(pass(word|wd|phrase)?|pwd|secret|token|api[_-]?key|private[_-]?key|credential|auth)"
)


def redact_text(text: str) -> str:
    """Mask credentials of any URIs embedded in free text."""
    text = _CREDENTIALS_IN_TEXT.sub(rf"\1:{MASK}@", _URI_IN_TEXT.sub(_mask_userinfo, text))
    return _SECRET_QUERY.sub(lambda m: m.group(1) + MASK, text)


def _mask_userinfo(match: re.Match[str]) -> str:
    """One URI of a text with its password masked (the user name kept), as redact_uri does."""
    userinfo, rest = split_userinfo(match.group(0))
    if userinfo is None or ":" not in userinfo:
        return match.group(0)
    scheme_end = _SCHEME_PREFIX.match(rest).end()  # type: ignore[union-attr]
    return f"{rest[:scheme_end]}{userinfo.partition(':')[0]}:{MASK}@{rest[scheme_end:]}"


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
