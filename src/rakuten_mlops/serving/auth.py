"""API keys and roles: clients may predict; admins may also reload the model and read
the inference log.

Keys come from the settings (API_CLIENT_KEY, API_ADMIN_KEY). Only their SHA-256 digests
are kept in memory, and a presented key is compared digest to digest in constant time.
No or an unknown key: 401. A valid key without the role the route needs: 403.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from rakuten_mlops.settings import Settings

API_KEY_HEADER = "X-API-Key"


class Role(StrEnum):
    CLIENT = "client"
    ADMIN = "admin"


# What each role may do, beyond its own name.
GRANTS = {Role.CLIENT: {Role.CLIENT}, Role.ADMIN: {Role.CLIENT, Role.ADMIN}}


class MissingKeysError(RuntimeError):
    """The API cannot start without both keys."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyRing:
    """Role lookup by key digest."""

    def __init__(self, keys: dict[Role, str]):
        if len({_digest(key) for key in keys.values()}) != len(keys):
            raise MissingKeysError("API_CLIENT_KEY and API_ADMIN_KEY must differ")
        self._digests = [(_digest(key), role) for role, key in keys.items()]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        missing = [
            name
            for name, value in (
                ("API_CLIENT_KEY", settings.api_client_key),
                ("API_ADMIN_KEY", settings.api_admin_key),
            )
            if value is None or not value.get_secret_value()
        ]
        if missing:
            raise MissingKeysError(
                f"the prediction API needs {' and '.join(missing)} (run `make setup`, "
                "which generates them in .env, or set them in the environment)"
            )
        return cls(
            {
                Role.CLIENT: settings.api_client_key.get_secret_value(),
                Role.ADMIN: settings.api_admin_key.get_secret_value(),
            }
        )

    def role_of(self, key: str | None) -> Role | None:
        if not key:
            return None
        presented = _digest(key)
        found = None
        for digest, role in self._digests:  # no early exit: same time for every key
            if hmac.compare_digest(digest, presented):
                found = role
        return found


api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="The client or admin API key (API_CLIENT_KEY / API_ADMIN_KEY).",
)


def authorise(request: Request, key: str | None, needed: Role) -> Role:
    """The caller's role, or the 401/403 that refuses it."""
    keyring: KeyRing = request.app.state.keyring
    role = keyring.role_of(key)
    if role is None:
        kind = "auth_missing" if not key else "auth_invalid"
        request.app.state.metrics.errors.labels(kind).inc()
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=f"missing {API_KEY_HEADER} header" if not key else "invalid API key",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )
    if needed not in GRANTS[role]:
        request.app.state.metrics.errors.labels("forbidden").inc()
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"this route needs the {needed.value} role"
        )
    return role


def require(needed: Role):
    """A dependency that admits callers with `needed` (admins are also clients)."""

    def dependency(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> Role:
        return authorise(request, key, needed)

    return dependency


ClientRole = Annotated[Role, Depends(require(Role.CLIENT))]
AdminRole = Annotated[Role, Depends(require(Role.ADMIN))]
