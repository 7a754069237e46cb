"""The standalone service: ``create_app()`` = the notifications blueprint on its embedded defaults.

With no ``DATABASE_URL`` it starts (or reuses) an embedded PostgreSQL in the instance folder.
With no ``JWT_SECRET_KEY`` it is in development mode: a key kept in the instance folder, a demo
token printed once, the demo page at ``/`` and a dev-token route. In production
(``NOTIFICATIONS_ENV=production``) a missing key is a start-up error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, request

import notifications
from notifications import Notifications
from notifications.config import ConfigError, development_key
from notifications.config import read as read_settings
from notifications.ops import ops

DEMO_USER = "demo"


def database_url(instance_path: str) -> str:
    """``DATABASE_URL`` from the environment, else the embedded PostgreSQL's."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    from notifications.embedded import EmbeddedPostgres

    return EmbeddedPostgres(os.path.join(instance_path, "pgdata")).start()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(config or {})
    settings = read_settings(app.config)  # the environment first, as Notifications(app) reads them
    if not app.config.get("DATABASE_URL"):
        app.config["DATABASE_URL"] = database_url(app.instance_path)

    production = settings.production
    dev_key = not app.config.get("JWT_SECRET_KEY") and not app.config.get("JWT_PUBLIC_KEY")
    if dev_key:
        if production:
            raise ConfigError(
                "JWT_SECRET_KEY is not set: production (NOTIFICATIONS_ENV=production) needs the "
                "key that signs your tokens"
            )
        app.config["JWT_SECRET_KEY"] = development_key(app.instance_path)
        app.config["NOTIFICATIONS_GENERATED_KEY"] = True  # gunicorn.conf.py prints a demo token
    # The demo page and /dev/token need a key that signs: not there with only a public key.
    can_sign = bool(app.config.get("JWT_SECRET_KEY") or app.config.get("JWT_PRIVATE_KEY"))
    dev_mode = can_sign and (dev_key or settings.dev_mode)

    Notifications(app)
    app.register_blueprint(ops)

    if dev_mode:
        _add_development_routes(app)
    return app


def _add_development_routes(app: Flask) -> None:
    from notifications.cli import mint_token

    page = (Path(notifications.__file__).parent / "static" / "demo.html").read_text()

    @app.get("/")
    def demo_page() -> Response:
        return Response(page, mimetype="text/html")

    @app.get("/dev/token")
    def dev_token() -> Any:
        """A token for any user (development only): ``/dev/token?user=alice``."""
        user = request.args.get("user", DEMO_USER)
        if not user or len(user) > 256:
            abort(400)
        return jsonify({"token": mint_token(user, publish=("*",)), "user": user})
