"""WSGI entry point: ``gunicorn -w 4 'example_app.wsgi:app'`` (configuration from the environment,
see :mod:`example_app.settings`). Every worker builds the app through the same factory."""

from __future__ import annotations

from .app import create_app

app = create_app()
