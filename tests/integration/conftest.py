"""The integration tier uses the shared fixtures of ``tests/support/fixtures.py`` as they are:
a fresh database and a real gunicorn server (2 gevent workers) per module, shaped by the
module's ``server_env``, and a unique ``user``, a ``token`` minter and ``open_stream`` per test.
"""
