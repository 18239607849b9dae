"""Turning a presented credential into a principal: who, with which roles, and how they proved it.

Two kinds of credential are accepted, told apart by their form: Charter's own API tokens
(`chr_...`, see tokens.py) for users in the users file, and JWTs from the configured OpenID
Connect provider (oidc.py). Anything else, and anything expired, revoked or unknown, is
refused with a one-line reason; nothing is ever let through by default.

A principal also carries the tenants it acts for: the user's (`tenants:` in the users file, or
the OIDC tenants claim), narrowed by the token's scope. Someone granted none acts for the home
tenant (CHARTER_TENANT) alone; `*` grants every tenant.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Engine

from charter.clock import Clock
from charter.identity import tokens
from charter.identity.oidc import JwtRejected, OidcVerifier
from charter.identity.roles import Permission, allows
from charter.identity.users import WatchedDirectory

EVERY_TENANT = "*"


@dataclass(frozen=True)
class Principal:
    user: str
    roles: frozenset[str]
    via: str  # "token" or "oidc"
    token_id: str | None = None
    email: str | None = None
    tenants: frozenset[str] = frozenset()

    def may(self, permission: Permission) -> bool:
        return allows(self.roles, permission)

    def acts_for(self, tenant: str | None) -> bool:
        return EVERY_TENANT in self.tenants or tenant in self.tenants

    @property
    def tenant_scope(self) -> frozenset[str] | None:
        """The tenants whose records they may see, or None for every tenant (no filter)."""
        return None if EVERY_TENANT in self.tenants else self.tenants


def granted(tenants: Collection[str] | None, home: str) -> frozenset[str]:
    """The tenants a grant names; none named is the home tenant alone (fail closed)."""
    return frozenset(tenants) if tenants else frozenset({home})


def beyond(held: frozenset[str], asked: Collection[str]) -> list[str]:
    """The tenants asked for (a token's scope) that a grant of `held` does not cover."""
    return [] if EVERY_TENANT in held else sorted(set(asked) - held)


def narrowed(held: frozenset[str], scope: Collection[str]) -> frozenset[str]:
    """What a token scoped to `scope` may act for, of what its user holds now: taking a tenant
    from a user takes it from their tokens too."""
    if not scope:
        return held
    if EVERY_TENANT in held:
        return frozenset(scope)
    return held & (held if EVERY_TENANT in scope else frozenset(scope))


class Unauthenticated(Exception):
    """No credential, or one that does not prove who is calling."""


class Authenticator:
    def __init__(
        self,
        engine: Engine,
        users: WatchedDirectory,
        oidc: OidcVerifier | None,
        clock: Clock,
        home_tenant: str = "default",
    ) -> None:
        self._home = home_tenant
        self._engine = engine
        self._users = users
        self._oidc = oidc
        self._clock = clock

    def authenticate(self, credential: str | None) -> Principal:
        """Blocking (a database read, perhaps a JWKS fetch): call it from a worker thread."""
        if not credential:
            raise Unauthenticated("no credentials: send Authorization: Bearer <token>")
        if tokens.looks_like(credential):
            return self._token(credential)
        if credential.count(".") == 2 and self._oidc is not None:
            try:
                claims = self._oidc.verify(credential)
            except JwtRejected as exc:
                raise Unauthenticated(str(exc)) from None
            return Principal(
                user=claims.user,
                roles=claims.roles,
                via="oidc",
                email=claims.email,
                tenants=granted(claims.tenants, self._home),
            )
        raise Unauthenticated(
            "not a Charter token" + ("" if self._oidc else ", and no OIDC provider is configured")
        )

    def _token(self, credential: str) -> Principal:
        with self._engine.begin() as conn:
            try:
                token = tokens.check(conn, credential, self._clock.now())
            except tokens.TokenRejected as exc:
                raise Unauthenticated(str(exc)) from None
        user = self._users.current().get(token.user_id)
        if user is None:
            raise Unauthenticated(
                f"token {token.token_id} belongs to {token.user_id}, who is no longer a user"
            )
        return Principal(
            user=user.id,
            roles=frozenset(token.roles) & frozenset(user.roles),
            via="token",
            token_id=token.token_id,
            email=user.email,
            tenants=narrowed(granted(user.tenants, self._home), token.tenants),
        )
