"""The checks every signed link shares (local files, WAV downloads): how user content is
served, and refusing a link no signer could have made."""

from __future__ import annotations

import re

from fastapi import HTTPException, status

USER_CONTENT_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
# Far beyond any TTL, and small enough to compare with the clock as a float.
_MAX_EXPIRES = 2**53


def refuse() -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, "link is invalid or has expired")


def check_link_shape(expires: int, sig: str) -> None:
    """403 for a signature or expiry no signer could have made. Checked before comparing:
    compare_digest refuses non-ASCII text, and a huge `expires` cannot meet the clock."""
    if not _SIGNATURE.fullmatch(sig) or not 0 <= expires <= _MAX_EXPIRES:
        raise refuse()
