"""A shorter way in for the commonest stream request: a browser connecting with ``?token=``.

``GET <prefix>/stream?token=...`` is admitted here, in front of Flask: the token verified by
flask-jwt-extended as the view would (or found in the worker's cache of verified tokens, see
``auth.VerifiedTokens``), then the same checks as the view (``views.admit``), without building a
request context. Everything else goes to Flask: tickets, cookies and headers, cross-origin
requests (CORS), HEAD, and every request of an app whose tokens may not be cached (a blocklist,
a user loader) or that registered an identity hook or request hooks of its own, which a stream
must not skip.

The fast path sits right in front of Flask's own ``wsgi_app``, inside any middleware the host
app wrapped around ``app.wsgi_app`` before or after ``init_app`` (werkzeug's ``ProxyFix``), so a
stream sees the same environ either way (see ``install``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask

from .auth import AccessError, QueryTokenVerifier
from .state import State
from .stream import StartResponse
from .transport import stream_headers
from .views import admit, refusal

log = logging.getLogger("notifications")

WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def install(app: Flask, state: State, path: str) -> None:
    """Put a ``StreamFastPath`` directly around Flask's own ``wsgi_app``.

    When the host app has already wrapped ``app.wsgi_app`` (``app.wsgi_app = ProxyFix(app.wsgi_app)``
    before ``init_app``), the fast path goes inside that middleware, found through the ``app``
    attribute werkzeug's middlewares keep. A middleware that hides what it wraps leaves the
    fast path out: every stream then goes through Flask, behind every middleware."""
    holder: Any = app
    attribute = "wsgi_app"
    inner = app.wsgi_app
    while not _is_flask_wsgi_app(app, inner):
        wrapped = getattr(inner, "app", None)
        if wrapped is None or not callable(wrapped):
            log.info("app.wsgi_app is wrapped by %s: streams go through Flask", type(inner).__name__)
            return
        holder, attribute, inner = inner, "app", wrapped
    setattr(holder, attribute, StreamFastPath(app, state, path, inner))


def _is_flask_wsgi_app(app: Flask, candidate: Any) -> bool:
    return getattr(candidate, "__self__", None) is app and getattr(candidate, "__func__", None) is type(app).wsgi_app


class StreamFastPath:
    """WSGI middleware around Flask's ``wsgi_app`` (see the module docstring)."""

    def __init__(self, app: Flask, state: State, path: str, wsgi_app: WsgiApp) -> None:
        self.flask_app = app
        self.wsgi_app = wsgi_app
        self.state = state
        self.path = path
        self._enabled: bool | None = None
        self._verifier: QueryTokenVerifier | None = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path or environ.get("REQUEST_METHOD") != "GET":
            return self.wsgi_app(environ, start_response)
        if "HTTP_ORIGIN" in environ or not self.enabled:
            return self.wsgi_app(environ, start_response)
        args: dict[str, str] = {}
        for key, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True, errors="replace"):
            args.setdefault(key, value)
        token = args.get(self.flask_app.config["JWT_QUERY_STRING_NAME"])
        if not token or "ticket" in args:
            return self.wsgi_app(environ, start_response)
        state = self.state
        try:
            identity = state.verified_tokens.get(token)
            if identity is None:
                if self._verifier is None:
                    self._verifier = QueryTokenVerifier(self.flask_app, state.verified_tokens)
                identity = self._verifier.verify(token)
            session = admit(state, identity, args, environ)
        except AccessError as exc:
            return refusal(state, exc)(environ, start_response)
        return session.serve(environ, start_response, stream_headers())  # type: ignore[no-any-return]

    @property
    def enabled(self) -> bool:
        """Decided on the first stream, once the app is fully set up: only where the view
        would do nothing more than this path does."""
        if self._enabled is None:
            app = self.flask_app
            before = any(app.before_request_funcs.values()) or any(app.url_value_preprocessors.values())
            after = [
                f
                for funcs in app.after_request_funcs.values()
                for f in funcs
                if not getattr(f, "__module__", "").startswith("flask_cors")
            ]
            self._enabled = (
                self.state.identity_hook is None
                and not before
                and not after
                and self.state.verified_tokens.size > 0
                and not app.config.get("JWT_QUERY_STRING_VALUE_PREFIX")
            )
        return self._enabled
