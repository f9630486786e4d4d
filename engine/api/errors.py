"""Errors of the HTTP API, each answered with its status code and ``{"detail": message}``.

    ApiError                  (engine.errors.FlowrelayError) root; carries `status`
    ├── BadRequest            400 malformed input (not JSON, wrong types, bad query values)
    ├── Unauthorized          401 no token, or a token that is not configured
    ├── Forbidden             403 a read token on a write endpoint
    ├── NotFound              404 unknown run, deployment, automation (names it)
    ├── Conflict              409 an idempotency key already used for another deployment
    ├── PayloadTooLarge       413 an event over api.max_event_bytes, a batch over api.max_batch
    └── Unavailable           503 a part of the server that is not running (automations off)

Engine errors met while answering are translated at the boundary (`engine.api.app`):
`ObjectNotFound` → 404, `ParameterValidationError`/`ValueError` → 422, `InvalidTransition` → 409.
"""

from __future__ import annotations

from engine.errors import FlowrelayError


class ApiError(FlowrelayError):
    status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class Unavailable(ApiError):
    status = 503


__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "Unavailable",
]
