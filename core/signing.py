"""Signatures for the links we hand out (local files, WAV downloads), one key per purpose.

Each purpose gets its own key, derived from SECRET_KEY with HKDF, so a signature made for
one kind of link is never valid for another, whatever shape its fields take. The MAC
covers every parameter of the link, encoded as a JSON list so no two different field
lists share a message (no separator can be smuggled into a field).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Signed link kinds; a new kind of link gets a new name here, never an existing one.
FILES = "files"
WAV = "wav"


class LinkSigner:
    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()
        self._keys: dict[str, bytes] = {}

    def _key(self, purpose: str) -> bytes:
        key = self._keys.get(purpose)
        if key is None:
            derive = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=f"soundfoundry signed link v1: {purpose}".encode(),
            )
            key = self._keys[purpose] = derive.derive(self._secret)
        return key

    def sign(self, purpose: str, expires: int, *fields: str) -> str:
        message = json.dumps([expires, *fields], ensure_ascii=True).encode()
        return hmac.new(self._key(purpose), message, hashlib.sha256).hexdigest()

    def verify(self, purpose: str, signature: str, expires: int, *fields: str) -> bool:
        """True for a fresh link signed for exactly this purpose and these fields."""
        fresh = expires >= time.time()
        expected = self.sign(purpose, expires, *fields)
        return fresh and hmac.compare_digest(expected.encode(), signature.encode())
