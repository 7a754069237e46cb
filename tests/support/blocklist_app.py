"""A host app that revokes tokens with flask-jwt-extended's blocklist:
``gunicorn ... tests.support.blocklist_app:app``.

Revoked ``jti`` values are read, one per line, from the file named by ``REVOKED_JTIS_FILE`` at
every check. The loader is registered after ``Notifications(app)``, on the JWTManager it set up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask
from flask_jwt_extended import JWTManager

from notifications import Notifications
from notifications.ops import ops


def revoked_jtis() -> set[str]:
    try:
        return set(Path(os.environ["REVOKED_JTIS_FILE"]).read_text().split())
    except FileNotFoundError:
        return set()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["DATABASE_URL"] = os.environ["DATABASE_URL"]
    app.config["JWT_SECRET_KEY"] = os.environ["JWT_SECRET_KEY"]
    Notifications(app)
    app.register_blueprint(ops)
    jwt: JWTManager = app.extensions["flask-jwt-extended"]

    @jwt.token_in_blocklist_loader
    def is_revoked(jwt_header: dict[str, Any], jwt_payload: dict[str, Any]) -> bool:
        return jwt_payload.get("jti") in revoked_jtis()

    return app


app = create_app()
