"""Errors the service maps to HTTP responses, and the handlers that do it.

Every error body has FastAPI's shape, ``{"detail": ...}``: a string for
errors about the request as a whole, or a list of ``{loc, msg, type, input,
ctx}`` entries for invalid fields, so clients parse one format.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)

_MAX_ECHOED_INPUT = 200


class BundleNotFoundError(LookupError):
    def __init__(self, name: str, installed: list[str]):
        self.name = name
        self.installed = installed
        listing = ", ".join(installed) if installed else "none"
        super().__init__(
            f"bundle {name!r} is not installed; installed bundles: {listing}. "
            "GET /adapters lists them with their versions"
        )


class FieldError(ValueError):
    """An invalid request field that only the loaded bundle can judge (item ranges, k)."""

    def __init__(self, loc: list[str | int], message: str, value: Any, error_type: str, context: dict | None = None):
        self.entry = {"loc": ["body", *loc], "msg": message, "type": error_type, "input": value, "ctx": context or {}}
        super().__init__(message)


class ServiceNotReadyError(RuntimeError):
    pass


def _json_safe(value: Any) -> Any:
    """Replace NaN and infinities, which JSON cannot carry, by their text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


def _short_input(value: Any) -> Any:
    """Keep echoed inputs short and valid JSON: a 10,000-item history would bloat every error."""
    value = _json_safe(value)
    text = json.dumps(value, default=str)
    if len(text) <= _MAX_ECHOED_INPUT:
        return value
    return text[:_MAX_ECHOED_INPUT] + "..."


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    entries = []
    for entry in error.errors():
        entry = dict(entry)
        entry.pop("url", None)
        if entry.get("type") == "json_invalid":
            reason = entry.get("ctx", {}).get("error", "")
            entry["msg"] = (
                f"the request body is not valid JSON ({reason}); send a JSON object such as "
                '{"bundle": "beauty", "history": [1, 2, 3], "k": 10}'
            )
        if "input" in entry:
            entry["input"] = _short_input(entry["input"])
        if "ctx" in entry:
            entry["ctx"] = _json_safe({key: value if isinstance(value, (int, float, str)) else str(value) for key, value in entry["ctx"].items()})
        entries.append(entry)
    return JSONResponse(status_code=422, content=jsonable_encoder({"detail": entries}))


async def _field_error(request: Request, error: FieldError) -> JSONResponse:
    return JSONResponse(status_code=422, content=jsonable_encoder({"detail": [error.entry]}))


async def _bundle_not_found(request: Request, error: BundleNotFoundError) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": str(error)})


async def _not_ready(request: Request, error: ServiceNotReadyError) -> JSONResponse:
    return JSONResponse(status_code=503, content={"detail": str(error)}, headers={"Retry-After": "5"})


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(status_code=500, content={"detail": "internal error; the service log has the details"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(FieldError, _field_error)
    app.add_exception_handler(BundleNotFoundError, _bundle_not_found)
    app.add_exception_handler(ServiceNotReadyError, _not_ready)
    app.add_exception_handler(Exception, _unexpected)
