"""Hide credentials before anything is shown.

Stream URIs carry camera passwords (``rtsp://admin:secret@cam``) and database
URLs carry database passwords. They are stored because they are needed, but
every representation meant for people or logs goes through here first.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# Query parameters that commonly carry secrets in camera and streaming URLs.
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:password|passwd|pass|pwd|secret|token|key|auth|passphrase|streamid)=)[^&#]*"
)


def redact_uri(uri: str) -> str:
    """Return ``uri`` with its password (and secret query values) masked.

    The user name stays visible: operators need to see which account a camera
    uses, and it is not a secret on its own.
    """
    if not isinstance(uri, str):
        return repr(type(uri))
    try:
        parts = urlsplit(uri)
    except ValueError:
        # Unparseable text may still contain "user:pass@": mask it bluntly.
        return re.sub(r"//[^/@\s]*@", f"//{MASK}@", uri)
    netloc = parts.netloc
    if "@" not in netloc and not _SECRET_QUERY.search("?" + parts.query):
        # Nothing to hide: return it as written (rebuilding would turn
        # sqlite:////abs.db into sqlite://abs.db, an empty host being dropped).
        return uri
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostinfo}" if has_password else f"{user}@{hostinfo}"
    query = _SECRET_QUERY.sub(lambda m: m.group(1) + MASK, "?" + parts.query)[1:] if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# "scheme://user:password@" anywhere in free text (log lines, event messages).
_CREDENTIALS_IN_TEXT = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:]*):[^\s/@]*@")
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
