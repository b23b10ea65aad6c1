"""Alert delivery: one JSON POST per alert and webhook, signed, retried with a doubling back-off.

Body: ``{"type": "clio.alert", "alert": {...}}``. Headers: ``X-Clio-Alert-Id`` (the receivers' dedup key: one id
per rule, facet and cluster), ``X-Clio-Timestamp`` (Unix seconds) and, when ``alert_webhook_secret`` is set,
``X-Clio-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``, so a receiver can check the sender and
refuse replays of old timestamps. An alert is delivered once every webhook answered 2xx; webhooks that did are
remembered (by a hash of their URL), so a retry at the next publish does not repeat them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence

import httpx

from clio_stream.domain.alerts import Alert
from clio_stream.settings import ClioSettings

log = logging.getLogger(__name__)

BACKOFF_S = 0.5


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Clio-Signature`` value of ``body`` sent at ``timestamp``."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def url_tag(url: str) -> str:
    """How a webhook is remembered without keeping its URL (which may carry a token)."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def _post(client: httpx.Client, url: str, alert: Alert, secret: str | None, retries: int) -> str | None:
    """POST one alert with retries; None on success, else the last error."""
    body = json.dumps({"type": "clio.alert", "alert": alert.model_dump(
        mode="json", exclude={"delivered", "attempts", "last_error", "delivered_to"})}, separators=(",", ":")).encode()
    error = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        stamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Clio-Alert-Id": alert.id, "X-Clio-Timestamp": stamp,
                   "User-Agent": "clio-stream-alerts"}
        if secret:
            headers["X-Clio-Signature"] = signature(secret, stamp, body)
        alert.attempts += 1
        try:
            response = client.post(url, content=body, headers=headers)
            if 200 <= response.status_code < 300:
                return None
            error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
    return error


def deliver(alerts: Sequence[Alert], settings: ClioSettings) -> None:
    """Send each alert to every webhook not yet reached; sets ``delivered``, ``attempts`` and ``last_error``."""
    urls = list(settings.alert_webhooks)
    secret = settings.alert_webhook_secret.get_secret_value() if settings.alert_webhook_secret is not None else None
    with httpx.Client(timeout=settings.alert_timeout_s, follow_redirects=False) as client:
        for alert in alerts:
            for url in urls:
                if url_tag(url) in alert.delivered_to:
                    continue
                error = _post(client, url, alert, secret, settings.alert_retries)
                if error is None:
                    alert.delivered_to.append(url_tag(url))
                else:
                    alert.last_error = error
                    log.warning("alert %s not delivered to webhook %s: %s", alert.id, url_tag(url), error)
            alert.delivered = all(url_tag(u) in alert.delivered_to for u in urls)
