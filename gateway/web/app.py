"""The admin web server: listeners, TLS, security headers, authentication, CSRF and errors.

Every request passes, in order: the Host check (against DNS rebinding), authentication
(an API token or the session cookie), the route's access level, and for state changes by a
browser (anything not carrying an API token) the Origin and synchronizer-token checks.
One access level, `signed` (the local command route), leaves the last two to its handler:
a signed command envelope authenticates itself, and anything else must be admitted as an
admin's request, the same checks in the same order.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import logging
import secrets
import ssl
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web, web_response
from aiohttp.web_protocol import RequestHandler
from cryptography import x509

from gateway.config import WebConfig, is_loopback, split_listen
from gateway.credentials.pki import (
    Pki,
    ensure_ca,
    home_constraints,
    host_names,
    issue_server_cert,
    permits,
    renewal_due,
    server_context,
)
from gateway.web.accounts import Accounts, AuthError, Principal
from gateway.web.api import (
    ACCESS,
    ACCOUNTS,
    COOKIES,
    DAEMON,
    GUARD,
    PRE,
    PRINCIPAL,
    ROUTES,
    STOPPING,
    HttpError,
    Route,
)
from gateway.web.auth import retry_after_header
from gateway.web.gate import KEEPALIVE_S, Gate, GatedListener
from gateway.web.pages import PAGES, Page, render_error

if TYPE_CHECKING:
    from gateway.daemon import Daemon

log = logging.getLogger(__name__)

SERVER_NAME = "home-gateway"  # never a version: it only helps an attacker pick an exploit
MAX_BODY = 64 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STATIC_DIR = Path(__file__).with_name("static")
CSP = ("default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
HSTS = "max-age=31536000"

# aiohttp answers requests it cannot parse itself, before any hook of ours runs, with its
# default Server header "Python/x aiohttp/y". Replace that default for this process.
web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]


def host_of(header: str) -> str:
    """The host part of a Host header: "[::1]:8080" -> "::1", "gw.local" -> "gw.local"."""
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass(frozen=True, slots=True)
class Cookies:
    """Names and attributes of the cookies; `__Host-` and Secure under TLS."""

    secure: bool

    @property
    def session(self) -> str:
        return "__Host-hg_session" if self.secure else "hg_session"

    @property
    def pre(self) -> str:
        """An anonymous browser's cookie: binds the login and setup forms' CSRF token."""
        return "__Host-hg_pre" if self.secure else "hg_pre"

    def _set(self, response: web.StreamResponse, name: str, value: str,
             max_age: int | None = None) -> None:
        response.set_cookie(name, value, path="/", httponly=True, samesite="Strict",
                            secure=self.secure, max_age=max_age)

    def set_session(self, response: web.StreamResponse, token: str) -> None:
        self._set(response, self.session, token)  # a session cookie: gone with the browser

    def clear_session(self, response: web.StreamResponse) -> None:
        response.del_cookie(self.session, path="/")

    def set_pre(self, response: web.StreamResponse, value: str) -> None:
        self._set(response, self.pre, value)

    @property
    def device(self) -> str:
        """A known browser's cookie (see Accounts.device_cookie): kept across restarts."""
        return "__Host-hg_device" if self.secure else "hg_device"

    def set_device(self, response: web.StreamResponse, value: str, max_age: int) -> None:
        self._set(response, self.device, value, max_age)


class Guard:
    """Authentication, access levels and CSRF for one app."""

    def __init__(self, accounts: Accounts, cookies: Cookies, allowed_hosts: set[str]) -> None:
        self.accounts = accounts
        self.cookies = cookies
        self.allowed_hosts = allowed_hosts
        self._key = secrets.token_bytes(32)  # signs anonymous CSRF tokens; per process

    def anonymous_csrf(self, pre: str) -> str:
        return hmac.new(self._key, pre.encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, request: web.Request) -> str:
        principal: Principal | None = request.get(PRINCIPAL)
        if principal is not None and principal.session is not None:
            return principal.session.csrf
        return self.anonymous_csrf(request[PRE])

    def identify(self, request: web.Request) -> Principal | None:
        """An API token when the request has an Authorization header (any, even an empty
        one: then never the session cookie, which would skip CSRF), else the session."""
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise HttpError(401, "Authorization: expected 'Bearer <API token>'",
                                {"WWW-Authenticate": "Bearer"})
            principal = self.accounts.api_token(token.strip())
            if principal is None:
                raise HttpError(401, "Authorization: unknown or revoked API token",
                                {"WWW-Authenticate": "Bearer"})
            return principal
        cookie = request.cookies.get(self.cookies.session)
        return self.accounts.session(cookie) if cookie else None

    def check_host(self, request: web.Request) -> None:
        if host_of(request.host).lower() not in self.allowed_hosts:
            raise HttpError(421, "Host: not a name of this gateway")

    def check_csrf(self, request: web.Request) -> None:
        """For browsers: the Origin must be this site and the token must match."""
        origin = request.headers.get("Origin")
        expected = f"{request.scheme}://{request.host}"
        if origin is None or origin.lower() != expected.lower():
            raise HttpError(403, "Origin: cross-site or missing; state changes must come "
                                 "from the gateway's own pages")
        sent = request.headers.get("X-CSRF-Token", "")
        if not sent or not hmac.compare_digest(sent, self.csrf_token(request)):
            raise HttpError(403, "X-CSRF-Token: missing or stale; reload the page")

    def check_browser_change(self, request: web.Request) -> None:
        """A state change by a browser passes the CSRF checks. API tokens are not ambient
        credentials: a request with an Authorization header is authenticated by its token
        alone (`identify`), so it needs none."""
        if request.method not in SAFE_METHODS and "Authorization" not in request.headers:
            self.check_csrf(request)

    def admit(self, request: web.Request, access: str, principal: Principal | None) -> None:
        """The access level, then for a state change by a browser the CSRF checks."""
        self.authorize(request, access, principal)
        self.check_browser_change(request)

    def authorize(self, request: web.Request, access: str, principal: Principal | None) -> None:
        if access == "public":
            return
        if principal is None:
            raise HttpError(401, "log in first", {"WWW-Authenticate": "Bearer"})
        if access in ("account", "users") and principal.token is not None:
            raise HttpError(403, "API tokens cannot manage accounts; log in to the page")
        if access == "users" and principal.role != "admin":
            raise HttpError(403, "only admins manage users")
        if access == "admin" and not principal.can_write:
            why = ("this API token is read-only" if principal.token is not None
                   and principal.role == "admin" else "viewers can look but not change")
            raise HttpError(403, why)


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def error_response(request: web.Request, status: int, message: str,
                   headers: dict[str, str] | None = None,
                   extra: dict[str, Any] | None = None) -> web.Response:
    if _is_api(request) or not request.headers.get("Accept", "").startswith("text/html"):
        response = web.json_response({"error": message, **(extra or {})}, status=status)
    else:
        response = web.Response(text=render_error(request, status, message), status=status,
                                content_type="text/html")
    response.headers.update(headers or {})
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except HttpError as exc:
        return error_response(request, exc.status, exc.message, exc.headers, exc.extra)
    except AuthError as exc:
        wait = {} if exc.retry_after is None else {
            "Retry-After": retry_after_header(exc.retry_after)}
        return error_response(request, exc.status, exc.message, wait, exc.extra)
    except web.HTTPRequestEntityTooLarge:
        return error_response(request, 413, f"body: larger than {MAX_BODY} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = {404: "not found", 405: f"method {request.method} not allowed here"}.get(
            exc.status, exc.reason)
        return error_response(request, exc.status, message, headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.error("web: %s %s failed:\n%s", request.method, request.path,
                  traceback.format_exc())
        return error_response(request, 500, "internal error; the gateway's log has details")


@web.middleware
async def guard_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    guard: Guard = request.app[GUARD]
    guard.check_host(request)
    resource = request.match_info.route.resource
    access = request.app[ACCESS].get((request.method, resource.canonical)) if resource else None
    if access is None:  # static files, and 404 / 405 answered by aiohttp
        response: web.StreamResponse = await handler(request)
        return response
    principal = guard.identify(request)
    request[PRINCIPAL] = principal
    # An anonymous browser's CSRF binding (the login and setup forms); API clients skip it.
    pre = request.cookies.get(guard.cookies.pre) or (
        secrets.token_urlsafe(32) if principal is None else "")
    request[PRE] = pre
    if access in ("page", "page-admin"):
        if principal is None:
            raise web.HTTPFound("/login?" + urlencode({"next": request.rel_url.path_qs}))
        if access == "page-admin" and principal.role != "admin":
            raise HttpError(403, "only admins may open this page")
    elif access != "signed":  # signed: the handler admits (see the module docstring)
        guard.authorize(request, access, principal)
    if access != "signed":
        guard.check_browser_change(request)
    response = await handler(request)
    if (principal is None and access != "signed"
            and pre != request.cookies.get(guard.cookies.pre)):
        guard.cookies.set_pre(response, pre)
    return response


async def _security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    _add_security_headers(request, response)


def _add_security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    response.headers["Server"] = SERVER_NAME
    if request.secure:
        response.headers["Strict-Transport-Security"] = HSTS
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


class _Unparsable(RequestHandler):
    """aiohttp's protocol, except for a request it cannot parse (a port scan, a fuzzer, a
    TLS hello on a plain port): aiohttp's answer echoes the raw bytes without the page's
    security headers and logs a traceback per probe; this answers the status alone, with
    the headers, and logs one (throttled) line."""

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None
                     ) -> web.StreamResponse:
        if status >= 500:  # a fault of ours: keep aiohttp's traceback in the log
            return super().handle_error(request, status, exc, message)
        log.info("admin page: answered %d to %s (%s)", status, request.remote,
                 type(exc).__name__ if exc else "no detail")
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already under way")
        response = web.Response(status=status, text=f"{status} {HTTPStatus(status).phrase}\n",
                                headers={"Cache-Control": "no-store"})
        _add_security_headers(request, response)  # aiohttp's hook runs for app requests only
        response.force_close()
        return response


def _answering_unparsable_plainly(server: web.Server) -> Callable[[], asyncio.Protocol]:
    """aiohttp's protocol factory, its handlers made _Unparsable (same slots: only
    handle_error differs)."""
    def make() -> asyncio.Protocol:
        handler = server()
        handler.__class__ = _Unparsable
        return handler
    return make


def make_app(daemon: Daemon, accounts: Accounts, secure: bool,
             allowed_hosts: set[str]) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY,
                          middlewares=[errors_middleware, guard_middleware])
    cookies = Cookies(secure)
    app[DAEMON] = daemon
    app[ACCOUNTS] = accounts
    app[COOKIES] = cookies
    app[GUARD] = Guard(accounts, cookies, allowed_hosts)
    app[STOPPING] = asyncio.Event()
    access: dict[tuple[str, str], str] = {}
    table: list[Route | Page] = [*ROUTES, *PAGES]
    for route in table:
        app.router.add_route(route.method, route.path, route.handler)
        access[(route.method, route.path)] = route.access
    app[ACCESS] = access
    app.router.add_static("/static/", STATIC_DIR, append_version=True)
    app.on_response_prepare.append(_security_headers)
    return app


class WebServer:
    """Serves the admin app on every `web.listen` address: HTTPS unless the address is
    loopback (and `web.tls` is "auto"); the certificate comes from the page's own CA
    (`web/ca.crt`), which name constraints limit to the home's names and addresses."""

    def __init__(self, daemon: Daemon, config: WebConfig, state_dir: Path,
                 accounts: Accounts) -> None:
        self.daemon = daemon
        self.config = config
        self.cert = state_dir / "web" / "server.crt"
        self.ca = Pki(state_dir / "web")  # web/ca.crt: what browsers import
        self.key = state_dir / "web" / "server.key"
        self.accounts = accounts
        self._runners: list[web.AppRunner] = []
        self._servers: list[asyncio.Server] = []
        self._listeners: list[GatedListener] = []
        self.gate = Gate()
        self._context: ssl.SSLContext | None = None  # set once a listener uses TLS
        self._tls_addresses: list[str] = []
        self.urls: list[str] = []

    def _needs_tls(self, host: str) -> bool:
        return self.config.tls == "always" or not is_loopback(host)

    def _ssl_context(self, hosts: list[str]) -> ssl.SSLContext:
        self._tls_addresses = [h for h in hosts if h != "localhost"]
        self.cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._issue()
        self._context = server_context(self.cert, self.key)
        return self._context

    def _issue(self) -> None:
        self._admin_ca(host_names(), self._tls_addresses)
        issue_server_cert(self.ca, self.cert, self.key, host_names(), self._tls_addresses)

    def renew(self, now: datetime.datetime | None = None) -> bool:
        """A new certificate for the page once the current one is near its end; the
        running listeners use it for every new connection. True when renewed."""
        if self._context is None or not renewal_due(self.cert, now):
            return False
        self._issue()
        self._context.load_cert_chain(self.cert, self.key)
        log.info("admin page: certificate renewed")
        return True

    def _admin_ca(self, names: list[str], addresses: list[str]) -> None:
        """The page's own CA, apart from the one devices pin: people import it into their
        browsers, so it is constrained to the home's names and addresses. It is made anew
        (and must be imported again) only when the host name or a listen address leaves
        what it covers."""
        if self.ca.ca_cert.exists():
            current = x509.load_pem_x509_certificate(self.ca.ca_cert.read_bytes())
            if permits(current, names, addresses):
                return
            log.warning("admin page: a new certificate authority for the page (%s), as the "
                        "old one does not cover %s: import it into browsers again",
                        self.ca.ca_cert, ", ".join([*names, *addresses]))
            self.ca.ca_cert.unlink()
        ensure_ca(self.ca, home_constraints(names, addresses), "admin page CA")

    def allowed_hosts(self) -> set[str]:
        """Names a browser may use for the page; anything else is DNS rebinding."""
        listen = {split_listen(e)[0].lower() for e in self.config.listen}
        hosts = listen | {n.lower() for n in host_names()}
        if any(is_loopback(h) for h in listen):
            hosts |= {"localhost", "127.0.0.1", "::1"}
        return hosts

    async def start(self) -> None:
        listen = [split_listen(e) for e in self.config.listen]
        if not listen:
            return
        tls_hosts = [h for h, _ in listen if self._needs_tls(h)]
        context = self._ssl_context(tls_hosts) if tls_hosts else None
        hosts = self.allowed_hosts()
        # One app per kind of listener: whether cookies are Secure depends on it.
        apps = {secure: make_app(self.daemon, self.accounts, secure, hosts)
                for secure in {self._needs_tls(h) for h, _ in listen}}
        loop = asyncio.get_running_loop()
        for secure, app in apps.items():
            runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_S)
            await runner.setup()
            self._runners.append(runner)
            assert runner.server is not None
            listener = GatedListener(self.gate, _answering_unparsable_plainly(runner.server),
                                     context if secure else None)
            self._listeners.append(listener)
            for host, port in listen:
                if self._needs_tls(host) != secure:
                    continue
                self._servers.append(await loop.create_server(listener, host, port,
                                                              reuse_address=True))
                scheme = "https" if secure else "http"
                shown = f"[{host}]" if ":" in host else host
                self.urls.append(f"{scheme}://{shown}:{port}/")
        log.info("admin page at %s", ", ".join(self.urls))

    async def stop(self) -> None:
        for runner in self._runners:
            runner.app[STOPPING].set()  # ends the event streams
        for server in self._servers:
            server.close()
        for runner in self._runners:
            await runner.cleanup()
        for listener in self._listeners:
            listener.close_all()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._listeners.clear()
        self._runners.clear()
