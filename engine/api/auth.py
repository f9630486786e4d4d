"""Bearer tokens (``api.tokens``): a read token reads, a write token reads and writes.

    Authorization: Bearer <token>

With no token configured every request is allowed, and `engine.api.server` refuses to listen
on anything but a loopback address. ``GET /api/stream`` also takes the token as the
``access_token`` query parameter, since a browser's EventSource cannot set headers.
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.api.context import ApiContext, context
from engine.api.errors import Forbidden, Unauthorized
from engine.settings import ApiTokens

bearer = HTTPBearer(
    auto_error=False,
    description="A token from api.tokens.read (read endpoints) or api.tokens.write (all).",
)

Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
Ctx = Annotated[ApiContext, Depends(context)]


def _matches(token: str, tokens: list[str]) -> bool:
    # Every configured token is compared, so the time taken says nothing about which matched.
    found = False
    for candidate in tokens:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def authorize(tokens: ApiTokens, token: str | None, *, write: bool) -> None:
    """Raise `Unauthorized` / `Forbidden` unless `token` may read (or write)."""
    if not tokens.any:
        return
    if not token:
        raise Unauthorized(
            "this endpoint needs a token: send 'Authorization: Bearer <token>' with a token "
            "from api.tokens.read or api.tokens.write"
        )
    if _matches(token, tokens.write):
        return
    if _matches(token, tokens.read):
        if write:
            raise Forbidden(
                "this token may only read: changing things needs a token from api.tokens.write"
            )
        return
    raise Unauthorized("the bearer token is not one of api.tokens.read or api.tokens.write")


def _bearer(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    if credentials is not None:
        return credentials.credentials
    header = request.headers.get("authorization")
    if header:  # present but not "Bearer <token>"
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return None


async def require_read(request: Request, ctx: Ctx, credentials: Credentials) -> None:
    authorize(ctx.settings.tokens, _bearer(request, credentials), write=False)


async def require_write(request: Request, ctx: Ctx, credentials: Credentials) -> None:
    authorize(ctx.settings.tokens, _bearer(request, credentials), write=True)


async def require_read_or_query(
    request: Request,
    ctx: Ctx,
    credentials: Credentials,
    access_token: Annotated[
        str | None, Query(description="The token, for clients that cannot set headers.")
    ] = None,
) -> None:
    token = access_token if credentials is None and access_token else _bearer(request, credentials)
    authorize(ctx.settings.tokens, token, write=False)


__all__ = ["authorize", "bearer", "require_read", "require_read_or_query", "require_write"]
