"""How a request fails over HTTP: ApiError, the mapping of any exception to one, and the handlers that send it.

Every error body is OpenAI-style: {"error": {"message", "type", "code", "param"}}, its message one
line for the client. The client is told what it can act on; what went wrong inside the server (an
exception's text, a file path) goes to the log only, under an error id the body names.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ..errors import ContextOverflowError, EdgeQwenError, InputError, RoleError
from ..roles import Role, pick_role
from .schemas import RequestError
from .worker import Cancelled, QueueFull, TimedOut

log = logging.getLogger("edgeqwen.server")
MAX_MESSAGE_CHARS = 400
PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[\\/](?:[^\s'\"\\/:]+[\\/])+([^\s'\"\\/:]*)")  # /a/b/c.npz → c.npz


class ApiError(Exception):
    """An HTTP error with a one-line message, returned as OpenAI-style JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = " ".join(message.split())  # one line, whatever it was built from
        message = message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def api_error(error: Exception) -> ApiError:
    """The HTTP form of anything a request can fail with."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, RequestError):
        return ApiError(error.status, str(error), code=error.code, param=error.param)
    if isinstance(error, QueueFull):
        return ApiError(503, str(error), type="server_busy", code="queue_full",
                        headers={"Retry-After": str(error.retry_after)})
    if isinstance(error, ClientDisconnect):
        return ApiError(400, "the client disconnected before the request body arrived", code="client_disconnected")
    if isinstance(error, Cancelled):
        return ApiError(503, "the request was cancelled (client gone or server stopping)", type="server_busy",
                        code="cancelled")
    if isinstance(error, TimedOut) and not error.started:
        return ApiError(503, f"{error}; retry in {error.retry_after} s", type="server_busy", code="request_timeout",
                        headers={"Retry-After": str(error.retry_after)})
    if isinstance(error, TimedOut):
        return ApiError(504, str(error), type="server_error", code="request_timeout")
    if isinstance(error, (InputError, ContextOverflowError)):
        return ApiError(422, without_paths(str(error)), code="invalid_input")
    if isinstance(error, EdgeQwenError):  # a role file, a head file, the model: the server's problem, told in its log
        return logged(error, "model_error", "the model could not answer this request")
    return logged(error, "internal_error", "internal error")


def without_paths(message: str) -> str:
    """A message with every file path cut to its last part: the client needs no server paths."""
    return PATH.sub(lambda match: match.group(1) or "…", message)


def logged(error: BaseException, code: str, what: str) -> ApiError:
    """A 500 whose body names only an error id; the log has the exception under that id."""
    error_id = uuid.uuid4().hex[:12]
    if isinstance(error, EdgeQwenError):
        log.error("error %s: %s: %s", error_id, type(error).__name__, error)
    else:
        log.error("error %s", error_id, exc_info=error)
    message = f"{what} (error id {error_id}; the server's log has the details)"
    return ApiError(500, message, type="server_error", code=code)


def role_or_404(roles: Mapping[str, Role], name: str, kind: str | None = None) -> Role:
    """The role called `name` (of `kind`, if given), or a 404 that lists the roles of that kind."""
    try:
        return pick_role(roles, name, kind)
    except RoleError:
        names = sorted(n for n, r in roles.items() if not kind or r.kind == kind)
        what = f"{kind} role" if kind else "role"
        raise ApiError(404, f"no {what} named {name!r}; available: {', '.join(names)}", code="role_not_found",
                       param="role") from None


async def handle_error(request: Request, error: Exception) -> Response:
    """Starlette's exception handler: unknown paths, wrong methods and anything else, as JSON."""
    if isinstance(error, HTTPException):
        where = f"{request.method} {request.url.path}"
        message = {404: f"no such endpoint: {where}",
                   405: f"method not allowed: {where}"}.get(error.status_code, error.detail)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        error = ApiError(error.status_code, message, code=code, headers=error.headers)
    return api_error(error).response()


def endpoint(method: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Route handler that turns any exception into a JSON error."""

    async def handle(request: Request) -> Response:
        try:
            return await method(request)
        except Exception as error:  # noqa: BLE001
            return api_error(error).response()

    handle.__name__ = method.__name__
    return handle
