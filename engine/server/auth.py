"""Bearer API keys: validated once at start, compared as bytes in constant time on every request."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from tripwire.engine.server.errors import ApiError


def validate_api_key(key: str | None) -> str | None:
    """Return `key` unchanged if a client can ever send it (None means "no key required").

    Raises:
        ValueError: the key is empty, has surrounding whitespace (HTTP strips it from header values, so it
            could never match) or contains a control character (it cannot be sent in a header).
    """
    if key is None:
        return None
    if not key or not key.strip():
        raise ValueError("API key must not be empty or blank")
    if key != key.strip():
        raise ValueError("API key must not have leading or trailing whitespace (it could never match)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ValueError("API key must not contain control characters (they cannot be sent in a header)")
    return key


def authorize(request: Request, api_key: str | None) -> None:
    """Check `Authorization: Bearer KEY` against `api_key` (None: open).

    The header's bytes (Starlette decodes headers as latin-1, so `.encode("latin-1")` restores them) are
    compared with the key's UTF-8 bytes by `hmac.compare_digest`: a non-ASCII key matches what a client
    sends, and a prefix or extension of the key never does.

    Raises:
        ApiError: 401 `invalid_api_key` with `WWW-Authenticate: Bearer`.
    """
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    sent = token.strip(" \t").encode("latin-1")
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent, api_key.encode("utf-8")):
        raise ApiError(401, "invalid_api_key", "missing or invalid API key (expected 'Authorization: Bearer <key>')",
                       headers={"WWW-Authenticate": "Bearer"})
