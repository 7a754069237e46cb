"""Asymmetric keys (``JWT_PUBLIC_KEY`` + ``JWT_ALGORITHM`` in the server's environment) and the
optional audience and issuer checks, against servers that only hold the public key.

* ``rs``: RS256, with a ``JWT_SECRET_KEY`` also set (so an HS256 token made with that secret, or
  with the public key as HMAC secret, is the algorithm-confusion attack to refuse).
* ``es``: ES256 with ``JWT_DECODE_AUDIENCE`` / ``JWT_DECODE_ISSUER``.
* a third, started by its own test: ES256 with *no* HMAC secret at all, the verify-only
  deployment of a service whose tokens come from an identity provider.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.support.checks import assert_refused
from tests.support.tokens import mint

from . import jwts
from .wire import publish, request

AUDIENCE = "notifications-api"
ISSUER = "https://idp.example.com/"


@pytest.fixture(scope="module")
def keys():
    return SimpleNamespace(
        rs=jwts.KeyPair("RS256"),
        es=jwts.KeyPair("ES256"),
        other_rs=jwts.KeyPair("RS256"),
        other_es=jwts.KeyPair("ES256"),
    )


@pytest.fixture(scope="module")
def servers(server_factory, keys):
    rs, es = server_factory.start_many(
        [
            {
                "name": "rs256",
                "env": {"JWT_ALGORITHM": "RS256", "JWT_PUBLIC_KEY": keys.rs.public_pem},
                "make_token": lambda sub: keys.rs.token(sub),
            },
            {
                "name": "es256",
                "env": {
                    "JWT_ALGORITHM": "ES256",
                    "JWT_PUBLIC_KEY": keys.es.public_pem,
                    "JWT_DECODE_AUDIENCE": AUDIENCE,
                    "JWT_DECODE_ISSUER": ISSUER,
                },
                "make_token": lambda sub: keys.es.token(sub, aud=AUDIENCE, iss=ISSUER),
            },
        ]
    )
    return SimpleNamespace(rs=rs, es=es, publisher=server_factory.publisher())


@pytest.fixture
def stream_on(servers, clients):
    def make(srv, tok=None, **kwargs):
        c = srv.stream(tok, **kwargs)
        clients.append(c)
        return c

    return make


# ------------------------------------------------------------------ the real thing works


@pytest.mark.parametrize("where", ["query", "bearer", "cookie"])
def test_rs256_token_opens_the_stream(servers, stream_on, keys, user, where):
    tok = keys.rs.token(user)
    if where == "query":
        c = stream_on(servers.rs, tok)
    elif where == "bearer":
        c = stream_on(servers.rs, headers={"Authorization": f"Bearer {tok}"})
    else:
        c = stream_on(servers.rs, headers={"Cookie": f"access_token_cookie={tok}"})
    c.wait_connected()
    c.wait_for_id(servers.publisher.notify("rs", user_id=user))


def test_es256_token_with_audience_and_issuer_opens_the_stream(servers, stream_on, keys, user):
    c = stream_on(servers.es, keys.es.token(user, aud=AUDIENCE, iss=ISSUER))
    c.wait_connected()
    c.wait_for_id(servers.publisher.notify("es", user_id=user))


def test_es256_audience_may_be_one_of_a_list(servers, stream_on, keys, user):
    c = stream_on(servers.es, keys.es.token(user, aud=["other", AUDIENCE], iss=ISSUER))
    c.wait_connected()


def test_rs256_grants_work_for_publishing(servers, keys, user):
    tok = keys.rs.token(user, notifications={"publish": ["orders"]})
    assert publish(servers.rs, tok, {"event": "x", "data": 1, "channel": "orders"}).status == 201
    assert publish(servers.rs, tok, {"event": "x", "data": 1}).status == 403


# ------------------------------------------------------------------ refused: RS256 server


def rs_forgeries(keys, secret, user):
    c = jwts.claims(user)
    good = keys.rs.token(user)
    return {
        "alg-none": jwts.unsigned(c),
        "hs256-with-public-key-pem-as-secret": jwts.hs256_raw(c, keys.rs.public_pem.encode()),
        "hs256-with-public-key-pem-stripped": jwts.hs256_raw(c, keys.rs.public_pem.strip().encode()),
        "hs256-with-server-secret": mint(secret, user),
        "rs256-other-key": keys.other_rs.token(user),
        "rs512-same-key": keys.rs.sign(c, algorithm="RS512"),
        "ps256-same-key": keys.rs.sign(c, algorithm="PS256"),
        "es256-token": keys.es.token(user),
        "tampered-payload": jwts.tamper_payload(good, sub=f"{user}-admin"),
        "tampered-grant": jwts.tamper_payload(good, notifications={"subscribe": ["*"]}),
        "tampered-signature": jwts.tamper_signature(good),
        "missing-exp": keys.rs.sign({"sub": user}),
        "expired": keys.rs.token(user, ttl=-5),
    }


RS_KINDS = list(
    rs_forgeries(
        SimpleNamespace(rs=jwts.KeyPair("RS256"), other_rs=jwts.KeyPair("RS256"), es=jwts.KeyPair("ES256")),
        "s" * 32,
        "u",
    )
)


@pytest.mark.parametrize("kind", RS_KINDS)
def test_rs256_server_refuses(servers, stream_on, keys, jwt_secret, user, kind):
    bad = rs_forgeries(keys, jwt_secret, user)[kind]
    assert_refused(stream_on(servers.rs, bad), 401)
    assert_refused(stream_on(servers.rs, headers={"Authorization": f"Bearer {bad}"}), 401)
    r = publish(servers.rs, bad, {"event": "x", "data": 1})
    assert r.status == 401, (r.status, r.body)


# ------------------------------------------------------------------ refused: ES256 + aud/iss


def es_forgeries(keys, secret, user):
    return {
        "no-audience": keys.es.token(user, iss=ISSUER),
        "wrong-audience": keys.es.token(user, aud="another-api", iss=ISSUER),
        "no-issuer": keys.es.token(user, aud=AUDIENCE),
        "wrong-issuer": keys.es.token(user, aud=AUDIENCE, iss="https://evil.example.com/"),
        "issuer-prefix": keys.es.token(user, aud=AUDIENCE, iss=ISSUER + "x"),
        "es256-other-key": keys.other_es.token(user, aud=AUDIENCE, iss=ISSUER),
        "hs256-with-public-key-pem": jwts.hs256_raw(
            jwts.claims(user, aud=AUDIENCE, iss=ISSUER), keys.es.public_pem.encode()
        ),
        "alg-none": jwts.unsigned(jwts.claims(user, aud=AUDIENCE, iss=ISSUER)),
        "hs256-with-server-secret": mint(secret, user, aud=AUDIENCE, iss=ISSUER),
        "expired": keys.es.token(user, ttl=-5, aud=AUDIENCE, iss=ISSUER),
        "missing-exp": keys.es.sign({"sub": user, "aud": AUDIENCE, "iss": ISSUER}),
        "tampered-audience": jwts.tamper_payload(keys.es.token(user, aud="another-api", iss=ISSUER), aud=AUDIENCE),
    }


ES_KINDS = list(es_forgeries(SimpleNamespace(es=jwts.KeyPair("ES256"), other_es=jwts.KeyPair("ES256")), "s" * 43, "u"))


@pytest.mark.parametrize("kind", ES_KINDS)
def test_es256_server_refuses(servers, stream_on, keys, jwt_secret, user, kind):
    bad = es_forgeries(keys, jwt_secret, user)[kind]
    assert_refused(stream_on(servers.es, bad), 401)


def test_verify_only_deployment_starts_and_serves_no_development_routes(server_factory, keys, user, tmp_path):
    """A service whose tokens come from an identity provider holds only the public key: no
    ``JWT_SECRET_KEY``. It must start, refuse forgeries, and (README "Configuration",
    ``NOTIFICATIONS_DEV_MODE``: with a configured key the demo page and ``/dev/token`` are served
    only when that is on) expose no development routes."""
    from tests.support.server import GunicornServer, ServerError

    srv = GunicornServer(
        server_factory.default_url,
        "",
        tmp_path / "gunicorn.log",
        env={"JWT_SECRET_KEY": "", "JWT_ALGORITHM": "ES256", "JWT_PUBLIC_KEY": keys.es.public_pem},
    )
    try:
        try:
            srv.start(timeout=30)
        except ServerError as exc:
            pytest.fail(f"a JWT_PUBLIC_KEY-only server does not start:\n{str(exc)[-3000:]}")
        log = srv.log_path.read_text(errors="replace")
        crash = log.find("Exception in worker process")
        assert crash < 0, f"a worker crashed while booting:\n{log[crash : crash + 2500]}"
        with srv.stream(keys.es.token(user)) as c:
            c.wait_connected()
        with srv.stream(mint("s" * 43, user)) as c:
            assert_refused(c, 401)
        status_page, _ = srv.get("/")
        status_token, body = srv.get("/dev/token?user=admin")
        assert (status_page, status_token) == (404, 404), (
            f"the JWT_PUBLIC_KEY-only server serves the demo page ({status_page}) and the dev-token "
            f"route ({status_token}: {body[:80]!r})"
        )
    finally:
        srv.stop()


def test_es256_publish_checks_tokens(servers, keys, user):
    tok = keys.es.token(user, aud=AUDIENCE, iss=ISSUER, notifications={"publish": ["*"]})
    assert publish(servers.es, tok, {"event": "x", "data": 1}).status == 201
    forged = jwts.hs256_raw(jwts.claims(user, aud=AUDIENCE, iss=ISSUER, notifications={"publish": ["*"]}), b"")
    assert publish(servers.es, forged, {"event": "x", "data": 1}).status == 401
    assert (
        request(servers.es, "POST", "/api/notifications/publish", b"{}", {"Content-Type": "application/json"}).status
        == 401
    )
