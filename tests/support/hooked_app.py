"""A host app with request hooks of its own, which must run for streams too:
``gunicorn ... tests.support.hooked_app:app``.

``before_request`` refuses any request carrying ``?blocked=1`` with a plain 403;
``after_request`` marks every response with ``X-Host-Hook: ran``.
"""

from __future__ import annotations

import os

from flask import Flask, Response, request

from notifications import Notifications
from notifications.ops import ops

HOOK_HEADER = "X-Host-Hook"


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["DATABASE_URL"] = os.environ["DATABASE_URL"]
    app.config["JWT_SECRET_KEY"] = os.environ["JWT_SECRET_KEY"]
    Notifications(app)
    app.register_blueprint(ops)

    @app.before_request
    def refuse_blocked() -> Response | None:
        if request.args.get("blocked") == "1":
            return Response("blocked by the host app\n", status=403, mimetype="text/plain")
        return None

    @app.after_request
    def mark(response: Response) -> Response:
        response.headers[HOOK_HEADER] = "ran"
        return response

    return app


app = create_app()
