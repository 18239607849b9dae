"""People signed in with an OpenID Connect identity provider: a JWT it issued, verified
against the provider's published keys (JWKS), with the user and roles read from its claims.

PyJWT does the verification: signature by a key from the JWKS (fetched and cached by
`PyJWKClient`), an asymmetric algorithm only, expiry, issuer and audience all required.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from charter.config import Settings
from charter.errors import ConfigError

# Asymmetric only: an HMAC algorithm would let anyone holding the public key forge tokens.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
LEEWAY_S = 30


class JwtRejected(Exception):
    """The JWT is not one Charter accepts; the message says why."""


@dataclass(frozen=True)
class Claims:
    user: str
    email: str | None
    roles: frozenset[str]
    tenants: frozenset[str]


class OidcVerifier:
    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_url: str,
        user_claim: str,
        roles_claim: str,
        *,
        tenants_claim: str = "tenants",
    ) -> None:
        self._tenants_claim = tenants_claim
        self._issuer = issuer
        self._audience = audience
        self._keys = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5)
        self._user_claim = user_claim
        self._roles_claim = roles_claim

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcVerifier | None:
        if settings.oidc_issuer is None:
            return None
        if settings.oidc_audience is None:
            raise ConfigError("CHARTER_OIDC_ISSUER is set but CHARTER_OIDC_AUDIENCE is not")
        jwks = settings.oidc_jwks_url or settings.oidc_issuer.rstrip("/") + "/.well-known/jwks.json"
        return cls(
            settings.oidc_issuer,
            settings.oidc_audience,
            jwks,
            settings.oidc_user_claim,
            settings.oidc_roles_claim,
            tenants_claim=settings.oidc_tenants_claim,
        )

    def verify(self, token: str) -> Claims:
        """The claims of a JWT the provider issued for Charter (blocking: it may fetch keys)."""
        try:
            key = self._keys.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWKClientError as exc:
            raise JwtRejected(f"no key to verify the token: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise JwtRejected(f"invalid token: {exc}") from None
        user = claims.get(self._user_claim) or claims.get("sub")
        if not isinstance(user, str) or not user:
            raise JwtRejected(f"the token names no user ({self._user_claim} or sub)")
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        return Claims(
            user=user,
            email=email,
            roles=frozenset(_strings(claims, self._roles_claim)),
            tenants=frozenset(_strings(claims, self._tenants_claim)),
        )


def _strings(claims: dict[str, Any], path: str) -> list[str]:
    """The roles (or tenants) at a dotted claim path (`realm_access.roles`), as a list of strings."""
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [r for r in value if isinstance(r, str)]
    return []
