"""The Flask extension: ``Notifications(app)`` or ``Notifications().init_app(app)``: reads the
settings, registers the blueprint, the stream fast path, CORS and the CLI, and keeps the run-time
``State`` in ``app.extensions["notifications"]`` (see ``state``)."""

from __future__ import annotations

from flask import Flask
from flask_jwt_extended import JWTManager

from . import config as config_module
from . import control_views as control_views  # its routes join the blueprint
from . import cors, fastpath
from . import inbox_views as inbox_views  # registers the inbox routes on the blueprint
from .cli import cli
from .exceptions import SetupError
from .state import EXTENSION_KEY, IdentityHook, State
from .state import get_state as get_state  # the public way to reach the state
from .views import blueprint

URL_PREFIX = "/api/notifications"


class Notifications:
    """Real-time notifications over Server-Sent Events, stored in PostgreSQL.

    ``identity`` is an optional hook called in the stream's request context: return the user id
    (or an ``Identity`` with grants) of a request the host app has already authenticated, for
    example Flask-Login's ``current_user.get_id()``, or None to fall back to the JWT.
    """

    def __init__(self, app: Flask | None = None, *, identity: IdentityHook | None = None) -> None:
        self.identity_hook = identity
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise SetupError("Notifications is already registered on this app.")
        settings = config_module.read(app.config)
        url = app.config.get("DATABASE_URL")
        if not url:
            raise config_module.ConfigError(
                "DATABASE_URL is not set: point it at PostgreSQL (app.py's create_app() starts an "
                "embedded one when it is missing)"
            )
        url = config_module.normalize_database_url(str(url))
        app.config["DATABASE_URL"] = url
        _configure_jwt(app)
        state = State(app, settings, url, self.identity_hook)
        app.extensions[EXTENSION_KEY] = state

        app.register_blueprint(blueprint, url_prefix=URL_PREFIX)
        fastpath.install(app, state, URL_PREFIX + "/stream")
        cors.install(app, settings.cors_origins, URL_PREFIX)
        app.cli.add_command(cli)
        if settings.auto_migrate:
            from .migrate import upgrade

            upgrade(state.store.engine, state.names)


def _configure_jwt(app: Flask) -> None:
    if app.config.get("JWT_PUBLIC_KEY") and not app.config.get("JWT_ALGORITHM"):
        raise config_module.ConfigError("JWT_PUBLIC_KEY is set: set JWT_ALGORITHM too (RS256, ES256, ...)")
    app.config.setdefault("JWT_TOKEN_LOCATION", ["headers", "query_string", "cookies"])
    app.config.setdefault("JWT_QUERY_STRING_NAME", "token")
    app.config.setdefault("JWT_VERIFY_SUB", False)  # ``sub`` may be a number; compared as a string
    if "flask-jwt-extended" not in app.extensions:
        JWTManager(app)
