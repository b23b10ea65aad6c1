"""Store errors: every Qdrant failure becomes a :class:`StoreError`, the transient kind a :class:`StoreUnavailable`.

Callers back off and retry on ``StoreUnavailable`` (server down, timeout, overload) rather than crash or
skip data; programming errors (``TypeError`` and the like) pass through untranslated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class StoreError(RuntimeError):
    """Qdrant refused or failed an operation."""


class CollectionMissing(StoreError):
    """The collections are not created yet (no worker has started): reads see an empty store."""


class StoreUnavailable(StoreError):
    """Qdrant is unreachable, timing out or overloaded: back off and retry."""


@contextmanager
def translate_errors(op: str) -> Iterator[None]:
    """Translate client exceptions into StoreUnavailable / StoreError (programming errors pass)."""
    try:
        yield
    except StoreError:
        raise
    except (TypeError, AttributeError, NameError, AssertionError):
        raise
    except Exception as exc:  # noqa: BLE001 - qdrant-client raises many unrelated types
        if _is_transient(exc):
            raise StoreUnavailable(f"qdrant {op} failed: {_short(exc)}") from exc
        if "doesn't exist" in str(exc) or "Not found: Collection" in str(exc):
            raise CollectionMissing(f"qdrant {op}: {_short(exc)}") from exc
        raise StoreError(f"qdrant {op} failed: {_short(exc)}") from exc


def _is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying later (connection, timeout, overload)."""
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpcio ships with qdrant-client
        grpc = None  # type: ignore[assignment]
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if grpc is not None and isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.UNKNOWN,
        }
    if isinstance(exc, ResponseHandlingException):
        return True  # the HTTP request itself failed: refused, reset, timed out
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


def _short(exc: BaseException) -> str:
    """One line for logs: gRPC errors print several lines, their ``details()`` is the useful part."""
    details = getattr(exc, "details", None)
    if callable(details):
        try:
            code = exc.code()  # type: ignore[attr-defined]
            return f"{type(exc).__name__}: {getattr(code, 'name', code)}: {details()}"[:300]
        except Exception:  # noqa: BLE001 - fall back to str()
            pass
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
