"""The WSGI entry point for any server: ``app.wsgi:app``."""

from . import create_app

app = create_app()
