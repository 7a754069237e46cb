"""A host app that authenticates streams with its own login session instead of a JWT,
through ``Notifications(app, identity=...)``: ``gunicorn ... tests.support.session_app:app``."""

from __future__ import annotations

import os

from flask import Flask, request, session

from notifications import Notifications
from notifications.ops import ops


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ["JWT_SECRET_KEY"] + "-sessions"
    app.config["DATABASE_URL"] = os.environ["DATABASE_URL"]
    Notifications(app, identity=lambda: session.get("user_id"))
    app.register_blueprint(ops)

    @app.post("/login")
    def login() -> str:
        session["user_id"] = request.form["user"]
        return "logged in"

    return app


app = create_app()
