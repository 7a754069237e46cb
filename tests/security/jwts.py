"""Hand-made JWTs for the security tier: valid ones for any algorithm, and the forged, tampered and
malformed ones an attacker would try (alg "none", algorithm confusion, edited payloads)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims(sub: str, ttl: float = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + int(ttl), **extra}


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)])


def hs256_raw(payload: Any, key: bytes, alg: str = "HS256") -> str:
    """An HMAC JWT computed by hand, with any bytes as the key (PyJWT refuses PEM keys and warns
    about short ones; an attacker's script does neither)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), digest).digest()
    return f"{head}.{body}.{b64(sig)}"


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    return raw_token({"alg": alg, "typ": "JWT"}, payload)


def tamper_payload(token: str, **changes: Any) -> str:
    """The same header and signature over an edited payload."""
    head, body, sig = token.split(".")
    payload = json.loads(unb64(body))
    payload.update(changes)
    return f"{head}.{b64(json.dumps(payload).encode())}.{sig}"


def tamper_signature(token: str) -> str:
    head, body, sig = token.split(".")
    raw = bytearray(unb64(sig))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{b64(bytes(raw))}"


class KeyPair:
    """A private key to sign with and the PEM public key a server verifies with."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        if algorithm.startswith("RS"):
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif algorithm == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(algorithm)
        self.private_pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.public_pem = (
            self.private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def sign(self, payload: dict[str, Any], algorithm: str | None = None) -> str:
        return jwt.encode(payload, self.private_pem, algorithm=algorithm or self.algorithm)

    def token(self, sub: str, ttl: float = 3600, **extra: Any) -> str:
        return self.sign(claims(sub, ttl, **extra))
