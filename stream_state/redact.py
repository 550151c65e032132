"""Hide credentials before anything is shown.

Stream URIs carry camera passwords (``rtsp://admin:secret@cam``) and database
URLs carry database passwords. They are stored because they are needed, but
every representation meant for people or logs goes through here first.
"""

from __future__ import annotations

import re
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
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostinfo}" if has_password else f"{user}@{hostinfo}"
    query = _SECRET_QUERY.sub(lambda m: m.group(1) + MASK, "?" + parts.query)[1:] if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
