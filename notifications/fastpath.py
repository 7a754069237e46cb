"""A shorter way in for the commonest stream request: a browser reconnecting with a token.

``GET <prefix>/stream?token=...`` whose token this worker has already verified (see
``auth.VerifiedTokens``) is admitted here, in front of Flask: the same checks as the view
(``views.admit``), without building a request context. Everything else goes to Flask: a first
or unknown token, tickets, cookies and headers, cross-origin requests (CORS), HEAD, and every
request of an app that registered an identity hook or request hooks of its own, which a stream
must not skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from .auth import AccessError
from .extension import State
from .stream import StartResponse, stream_headers
from .views import admit, refusal

WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class StreamFastPath:
    """WSGI middleware around ``app.wsgi_app`` (see the module docstring)."""

    def __init__(self, app: Flask, state: State, path: str) -> None:
        self.flask_app = app
        self.wsgi_app: WsgiApp = app.wsgi_app
        self.state = state
        self.path = path
        self._enabled: bool | None = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path or environ.get("REQUEST_METHOD") != "GET":
            return self.wsgi_app(environ, start_response)
        if "HTTP_ORIGIN" in environ or not self.enabled:
            return self.wsgi_app(environ, start_response)
        args: dict[str, str] = {}
        for key, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True, errors="replace"):
            args.setdefault(key, value)
        token = args.get(self.flask_app.config["JWT_QUERY_STRING_NAME"])
        identity = None if token is None or "ticket" in args else self.state.verified_tokens.get(token)
        if identity is None:
            return self.wsgi_app(environ, start_response)
        try:
            session = admit(self.state, identity, args, environ)
        except AccessError as exc:
            return refusal(self.state, exc)(environ, start_response)
        except SQLAlchemyError:
            error = AccessError(503, "notifications are unavailable: the database is unreachable")
            return refusal(self.state, error)(environ, start_response)
        return session.serve(environ, start_response, stream_headers())  # type: ignore[no-any-return]

    @property
    def enabled(self) -> bool:
        """Decided on the first stream, once the app is fully set up."""
        if self._enabled is None:
            app = self.flask_app
            before = any(app.before_request_funcs.values()) or any(app.url_value_preprocessors.values())
            after = [
                f
                for funcs in app.after_request_funcs.values()
                for f in funcs
                if not getattr(f, "__module__", "").startswith("flask_cors")
            ]
            self._enabled = self.state.identity_hook is None and not before and not after
        return self._enabled
