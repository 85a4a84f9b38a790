"""The pages' security headers (an ASGI middleware) and the same-origin check of every form post.

Every response: a Content-Security-Policy that allows only the hub's own scripts, styles and
fetches (no inline script: the pages' JavaScript is in static files), framing by no one
(``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``), ``nosniff``, no referrer outside the
hub; every response but a static file: ``Cache-Control: no-store`` (pages hold the inventory); with
TLS, HSTS. A POST must carry an ``Origin`` that is the hub's own (:func:`same_origin`), besides
its session's CSRF token (:mod:`ksocket.hub.web.auth`).
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS: Final = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}
HSTS: Final = "max-age=31536000"


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
                if not static:
                    headers["cache-control"] = "no-store"
                if self.hsts:
                    headers["strict-transport-security"] = HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def same_origin(request: Request) -> bool:
    """Whether the request's ``Origin`` is the hub's own address (as the browser reached it)."""
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    return origin is not None and host is not None and origin == f"{request.url.scheme}://{host}"
