"""A host app behind a proxy it trusts: werkzeug's ``ProxyFix`` (one ``X-Forwarded-For`` hop)
around ``app.wsgi_app``, applied before or after ``Notifications(app)``:
``gunicorn ... "tests.support.proxied_app:create_app('before')"`` (or ``'after'``).

No request hooks of its own, so ``?token=`` streams take the fast path; either way they must see
the forwarded address as ``REMOTE_ADDR``, as the Flask path does.
"""

from __future__ import annotations

import os

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from notifications import Notifications
from notifications.ops import ops


def create_app(proxy_fix: str) -> Flask:
    """``proxy_fix``: ``"before"`` or ``"after"`` ``Notifications(app)``."""
    if proxy_fix not in ("before", "after"):
        raise ValueError(f"proxy_fix must be 'before' or 'after', not {proxy_fix!r}")
    app = Flask(__name__)
    app.config["DATABASE_URL"] = os.environ["DATABASE_URL"]
    app.config["JWT_SECRET_KEY"] = os.environ["JWT_SECRET_KEY"]
    if proxy_fix == "before":
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    Notifications(app)
    if proxy_fix == "after":
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    app.register_blueprint(ops)
    return app
