"""The caller's own API tokens: create (shown once), list, revoke.

    POST   /api/tokens/self         {name?, expires_in_days?} -> 201, the token once
    GET    /api/tokens/self         the caller's tokens, never a secret
    DELETE /api/tokens/self/{id}    revoke one of the caller's tokens (204; 404 otherwise)

`GET /api/tokens` (the public design tokens) is another thing and lives in style.py.
A revoked or expired token is refused by the next request that carries it, including an
open event stream (which re-checks its token every SSE_TOKEN_RECHECK_S).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CurrentUser, ServicesDep
from core.logging import get_logger
from domain import tokens

router = APIRouter(prefix="/api/tokens/self", tags=["tokens"])
log = get_logger("soundfoundry.api.tokens")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="default", min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
    expires_in_days: int | None = Field(
        default=None,
        ge=1,
        le=tokens.MAX_EXPIRY_DAYS,
        description="the token stops working this many days from now; none: never expires",
    )


class TokenOut(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    # Neither revoked nor expired.
    active: bool


class TokenCreated(TokenOut):
    token: str = Field(description="shown this once; only its hash is stored")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    responses={409: {"description": "the user already holds API_TOKENS_MAX_PER_USER tokens"}},
)
async def create_token(
    body: TokenCreate, user: CurrentUser, services: ServicesDep, response: Response
) -> TokenCreated:
    try:
        row, secret = await tokens.issue_token(
            services.sessions,
            user.id,
            body.name,
            body.expires_in_days,
            max_usable=services.settings.api_tokens_max_per_user,
        )
    except tokens.TooManyTokens as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    # The one response that carries the token: no cache may keep it.
    response.headers["Cache-Control"] = "no-store"
    log.info("token created", user_id=str(user.id), token_id=str(row.id))
    return TokenCreated(**tokens.describe(row), token=secret)


@router.get("", response_model=list[TokenOut])
async def list_my_tokens(user: CurrentUser, services: ServicesDep) -> list[TokenOut]:
    rows = await tokens.list_tokens(services.sessions, user.id)
    return [TokenOut(**tokens.describe(row)) for row in rows]


@router.delete(
    "/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "no token of yours has this id"}},
)
async def revoke_my_token(token_id: uuid.UUID, user: CurrentUser, services: ServicesDep) -> None:
    try:
        await tokens.revoke_token(services.sessions, token_id, owner_id=user.id)
    except tokens.TokenNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no token of yours has this id") from exc
    log.info("token revoked", user_id=str(user.id), token_id=str(token_id))
