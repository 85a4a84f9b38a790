"""Operators log in and out; every other page asks :func:`operator_page` for the session.

``/`` is the entry: the log-in form, or the node list once logged in. ``POST /login`` checks the
name and password (:class:`~ksocket.hub.web.operators.Operators`, argon2id) under the
:class:`~ksocket.hub.web.throttle.LoginThrottle` (per name and per peer), then sets the session
cookie: ``HttpOnly``, ``SameSite=Strict``, ``Secure`` when the hub serves TLS, the random id alone
(the database keeps only its hash). ``POST /logout`` deletes the session. Every POST must come from
the hub's own origin and carry the session's CSRF token (:func:`form_of`). Nothing here logs a
password or a session id; a failed log-in is logged with the peer, and the name when it is an
operator's (an unknown one may be a password typed in the wrong field).
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Callable
from typing import Final

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ksocket.hub.web.app import Web, web
from ksocket.hub.web.operators import SESSION_LIFETIME, Session
from ksocket.hub.web.security import same_origin

COOKIE: Final = "ksocket_session"
HOME: Final = "/nodes"
MAX_FORM: Final = 64 * 1024
MAX_FIELDS: Final = 16
log = logging.getLogger("ksocket.hub.web")

Page = Callable[[Request, Session], Response]


def current(request: Request) -> Session | None:
    """The request's live session (from a thread of the pool: it reads the database)."""
    session_id = request.cookies.get(COOKIE)
    if not session_id or len(session_id) > 128:
        return None
    return web(request).connections.operators.session(session_id)


def operator_page(handler: Page) -> Callable[[Request], Response]:
    """A sync endpoint for logged-in operators only: others go to the log-in page (or get 401 from ``/api``)."""

    def endpoint(request: Request) -> Response:
        session = current(request)
        if session is None:
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": "not logged in"}, status_code=401)
            return RedirectResponse("/", status_code=303)
        return handler(request, session)

    return endpoint


async def form_of(request: Request) -> tuple[Session | None, FormData | None]:
    """The session and the form of a POST that is the operator's own: same origin, the session's CSRF token.

    (None, None) when the origin is not the hub's; (None, form) without a session; (session, None)
    when the CSRF token is wrong.
    """
    if not same_origin(request):
        return None, None
    form = await request.form(max_files=0, max_fields=MAX_FIELDS, max_part_size=MAX_FORM)
    session = await run_in_threadpool(current, request)
    if session is None:
        return None, form
    token = form.get("csrf")
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), session.csrf.encode()):
        return session, None
    return session, form


def refused(why: str) -> Response:
    return PlainTextResponse(f"refused: {why}\n", status_code=403)


def entry(request: Request) -> Response:
    if current(request) is not None:
        return RedirectResponse(HOME, status_code=303)
    return web(request).render("login.html", error="", name="")


def _peer(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _log_in(state: Web, name: str, password: str, peer: str) -> Session | float | None:
    """The new session, the seconds to wait before trying again, or None for a wrong name or password."""
    with state.log_ins:
        return _check(state, name, password, peer)


def _check(state: Web, name: str, password: str, peer: str) -> Session | float | None:
    keys = (("name", name), ("peer", peer))
    wait = state.throttle.wait(keys)
    if wait > 0:
        return wait
    operators = state.connections.operators
    if not operators.verify(name, password):
        state.throttle.failed(keys)
        # an unknown name may be a password typed in the wrong field: it is not logged
        log.warning("failed log-in as %s from %s", repr(name) if operators.exists(name) else "an unknown name", peer)
        return None
    state.throttle.succeeded(keys)
    log.info("operator %r logged in from %s", name, peer)
    return operators.open_session(name)


async def login(request: Request) -> Response:
    if not same_origin(request):
        return refused("the form did not come from this hub's own page")
    form = await request.form(max_files=0, max_fields=MAX_FIELDS, max_part_size=MAX_FORM)
    name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))
    state = web(request)
    outcome = await run_in_threadpool(_log_in, state, name, password, _peer(request))
    if isinstance(outcome, Session):
        response: Response = RedirectResponse(HOME, status_code=303)
        response.set_cookie(
            COOKIE,
            outcome.id,
            max_age=int(SESSION_LIFETIME),
            path="/",
            secure=state.secure_cookies,
            httponly=True,
            samesite="strict",
        )
        return response
    if outcome is None:
        return state.render("login.html", 401, error="Wrong name or password.", name=name)
    error = f"Too many failed attempts: try again in {math.ceil(outcome)} s."
    return state.render("login.html", 429, error=error, name=name)


def _log_out(state: Web, session: Session) -> None:
    state.connections.operators.close_session(session.id)  # the pool thread's connection, looked up there
    log.info("operator %r logged out", session.name)


async def logout(request: Request) -> Response:
    session, form = await form_of(request)
    if form is None:
        return refused("not this session's form")
    if session is not None:  # else it had already ended: only the cookie is left to clear
        await run_in_threadpool(_log_out, web(request), session)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, path="/", secure=web(request).secure_cookies, httponly=True, samesite="strict")
    return response


def routes() -> list[Route]:
    return [
        Route("/", entry, name="entry"),
        Route("/login", login, methods=["POST"], name="login", max_body_size=MAX_FORM),
        Route("/logout", logout, methods=["POST"], name="logout", max_body_size=MAX_FORM),
    ]
