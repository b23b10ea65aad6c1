"""The clio-stream HTTP API and dashboard (FastAPI). Entry point: ``api.app.create_app``.

``create_app`` is imported lazily so that light modules (``api.auth``) can be
used without loading FastAPI, Qdrant and Kafka clients.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from api.app import create_app

        return create_app
    raise AttributeError(f"module 'api' has no attribute {name!r}")
