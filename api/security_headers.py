"""Strict browser headers on every answer: the web page and the docs are plain static files
with external scripts only, so the policy can forbid inline scripts outright.

Put on every answer by api/observability.py's RequestObserver (one pure ASGI layer for all that
every request needs): they replace any header of the same name the app set, and never touch
bodies, so downloads stream as before.
"""

from __future__ import annotations

# Inline styles stay allowed: Uppy and Swagger UI set style attributes. Scripts never are.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
