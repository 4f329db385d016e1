"""Request bodies read and parsed strictly: JSON only, bounded in size and time, hostile JSON a one-line 400.

A JSON endpoint needs `Content-Type: application/json`: the bodies a web page can send to another
site without a CORS preflight (text/plain, forms, no type at all) never reach the model. The text
must be UTF-8; NaN and Infinity, numbers out of a 64-bit range, duplicate keys, lone UTF-16
surrogates and nesting deeper than Python's parser goes are refused, each with a message that says
what was wrong and where.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.requests import Request

from .errors import ApiError

MAX_INT = 2**63 - 1
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class _Refused(ValueError):
    """JSON that parses but is refused (a duplicate key, a number out of range)."""


def require_json(content_type: str | None) -> None:
    """Refuse a body that is not declared as JSON (415)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    got = f"got {media!r}" if media else "got none"
    raise ApiError(
        415,
        f"send the body as JSON with the header 'Content-Type: application/json' ({got}); with curl: --json '{{...}}'",
        code="unsupported_media_type",
    )


async def read_json(request: Request, max_bytes: int, timeout: float) -> Any:
    """The request's JSON body: declared as JSON, at most `max_bytes` (413), all of it within
    `timeout` seconds (408), parsed by parse_json."""
    require_json(request.headers.get("content-type"))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(int(declared), max_bytes)
    body = bytearray()
    try:
        await asyncio.wait_for(_receive(request, body, max_bytes), timeout)
    except asyncio.TimeoutError:
        raise ApiError(
            408, f"the request body did not arrive within {timeout:g} s ({len(body)} bytes came)", code="body_timeout"
        ) from None
    return parse_json(bytes(body))


async def _receive(request: Request, body: bytearray, max_bytes: int) -> None:
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large(len(body), max_bytes)


def too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413,
        f"request body of {size} bytes is over this server's limit of {limit} bytes (--max-body-bytes)",
        code="body_too_large",
    )


def parse_json(data: bytes) -> Any:
    """`data` as JSON, or a one-line ApiError 400 saying what is wrong with it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _invalid(f"it is not UTF-8 (byte {error.start})") from None
    try:
        value = json.loads(
            text, object_pairs_hook=_object, parse_constant=_constant, parse_int=_integer, parse_float=_float
        )
    except RecursionError:
        raise _invalid("it is nested too deeply") from None
    except _Refused as error:
        raise _invalid(str(error)) from None
    except json.JSONDecodeError as error:
        raise _invalid(f"{error.msg} (line {error.lineno}, column {error.colno})") from None
    if SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise _invalid("it holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), not Unicode text")
    return value


def _invalid(why: str) -> ApiError:
    return ApiError(400, f"the request body is not valid JSON: {why}", code="invalid_json")


def _object(pairs: list[tuple[str, Any]]) -> dict:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        key = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _Refused(f"the key {json.dumps(key)[:60]} appears twice in one object")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _integer(digits: str) -> int:
    if len(digits) > 20 or abs(value := int(digits)) > MAX_INT:
        raise _Refused(f"the number {_shown(digits)} is out of range (at most {MAX_INT})")
    return value


def _float(digits: str) -> float:
    value = float(digits)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"the number {_shown(digits)} is out of range")
    return value


def _shown(digits: str) -> str:
    return digits if len(digits) <= 24 else digits[:24] + "…"


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string in a parsed body holds an unpaired surrogate (looked for only when the text
    has surrogate escapes)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
