"""Cross-site protection: a 403 for requests to another host name (DNS rebinding) and for web pages of other origins.

A web page in the user's browser can send requests to 127.0.0.1 or to a board on the LAN, and with
DNS rebinding (its own name made to resolve there) even read the answers. So a request is served
only when its `Host` is this server's: an IP address, localhost or a name under .localhost, this
machine's name (or NAME.local), the --host name, or one listed with --allowed-hosts; and a request
that carries an `Origin` (a browser sends one with every cross-origin fetch and every POST) only
when that origin is the server's own (its page) or is listed with --allowed-origins (CORS headers
are then added by Starlette's CORSMiddleware). curl, the openai client and `llm` send no Origin,
and their Host is the address they were given. The model of this is ollama's fix for CVE-2024-28224.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError

log = logging.getLogger("edgeqwen.server")
DEFAULT_PORTS = {"http": 80, "https": 443}
SAFE_METHODS = ("GET", "HEAD")


def split_host(host: str) -> tuple[str, int | None]:
    """A Host header's name (lower case, IPv6 without brackets) and port (None when absent or not a number)."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    return name.rstrip("."), int(port) if port.isdigit() else None


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def own_names(listen_host: str) -> set[str]:
    """The names this server answers for without --allowed-hosts: localhost, this machine's name and
    NAME.local, and --host when it is a name."""
    machine = socket.gethostname().lower().rstrip(".")
    names = {"localhost", machine, f"{machine.split('.')[0]}.local"}
    if not is_ip(listen_host):
        names.add(listen_host.lower())
    return names


def origin_pattern(origins: Sequence[str]) -> str | None:
    """A regular expression for the listed origins that hold a '*' (e.g. http://localhost:*), for CORSMiddleware."""
    wild = [re.escape(origin).replace(r"\*", "[^/]*") for origin in origins if "*" in origin and origin != "*"]
    return "|".join(wild) or None


class SiteGuard:
    """ASGI middleware: a 403 for a foreign Host, or for an Origin that is neither the server's own nor listed."""

    def __init__(
        self, app: ASGIApp, listen_host: str, allowed_hosts: Sequence[str] = (), allowed_origins: Sequence[str] = ()
    ) -> None:
        self.app = app
        self.names = own_names(listen_host)
        self.host_patterns = [pattern.lower() for pattern in allowed_hosts]
        self.origins = list(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        error = self._host_error(host) or self._origin_error(
            headers.get("origin"), host, headers.get("sec-fetch-site"), scope["method"]
        )
        if error is None:
            return await self.app(scope, receive, send)
        log.info("refused %s %s: %s", scope["method"], scope["path"], error.message)
        await error.response()(scope, receive, send)

    def host_allowed(self, host: str) -> bool:
        name, _ = split_host(host)
        if not name or is_ip(name) or name in self.names or name.endswith(".localhost"):
            return True
        return any(fnmatchcase(name, pattern) for pattern in self.host_patterns)

    def origin_allowed(self, origin: str, host: str) -> bool:
        return same_origin(origin, host) or any(fnmatchcase(origin, pattern) for pattern in self.origins)

    def _host_error(self, host: str) -> ApiError | None:
        if self.host_allowed(host):
            return None
        name = split_host(host)[0][:80]
        return ApiError(
            403,
            f"this server does not answer for the host name {name!r} (a guard against DNS rebinding); "
            f"if the name is yours, start it with --allowed-hosts {name}",
            type="permission_error",
            code="host_not_allowed",
        )

    def _origin_error(self, origin: str | None, host: str, fetch_site: str | None, method: str) -> ApiError | None:
        if origin is None:
            # A browser's cross-site request without an Origin (browsers send one with every POST)
            if fetch_site == "cross-site" and method not in SAFE_METHODS:
                return ApiError(
                    403,
                    "cross-site requests from a browser are refused",
                    type="permission_error",
                    code="origin_not_allowed",
                )
            return None
        if self.origin_allowed(origin, host):
            return None
        return ApiError(
            403,
            f"requests from the web page origin {origin[:80]!r} are refused; to let that page use this server, "
            f"start it with --allowed-origins {origin[:80]}",
            type="permission_error",
            code="origin_not_allowed",
        )


def same_origin(origin: str, host: str) -> bool:
    """Whether `origin` (scheme://name[:port]) is the server the request was sent to (its Host): the
    server's own page."""
    try:
        parts = urlsplit(origin)
        origin_port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    name, port = split_host(host)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.hostname.rstrip(".") != name:
        return False
    return origin_port == (port if port is not None else DEFAULT_PORTS[parts.scheme])
