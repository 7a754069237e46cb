"""Fixtures of the ops tier: real nginx, two instances, metrics and health.

The database, token and server fixtures are the shared ones (``tests/support/fixtures.py``):
a fresh database and a gunicorn server per module. What is particular to the tier is in its
modules: nginx in front of the module's server (``test_nginx.py``), a second instance on the
same database (``test_two_instances.py``), a PostgreSQL cluster of the module's own that the
health test stops and restarts (``test_operability.py``).
"""
