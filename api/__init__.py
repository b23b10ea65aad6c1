"""The clio-stream HTTP API and dashboard (FastAPI). Entry point: ``api.app.create_app``."""

from __future__ import annotations

from api.app import create_app

__all__ = ["create_app"]
