"""Mint HS256 JWTs the way the service expects them (``sub`` and ``exp``)."""

from __future__ import annotations

import time
from typing import Any

import jwt


def mint(secret: str, sub: str, ttl: float = 3600, **claims: Any) -> str:
    """A token for ``sub`` valid for ``ttl`` seconds (negative ``ttl``: already expired)."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": str(sub), "iat": now, "exp": now + int(ttl), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")
