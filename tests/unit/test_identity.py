"""Who is calling: users, API tokens (hashed, scoped, revocable, expiring), JWTs from an OIDC
provider verified against its JWKS, and what each role may do."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import Engine, select

from charter.clock import FixedClock
from charter.errors import ConfigError
from charter.identity import tokens
from charter.identity.oidc import OidcVerifier
from charter.identity.principal import Authenticator, Unauthenticated
from charter.identity.roles import Permission, allows
from charter.identity.users import Directory, WatchedDirectory
from charter.store import make_engine

USERS = """
users:
  - {id: dana, email: dana@example.com, roles: [finance]}
  - {id: maria, email: Maria.Lopez@example.com, roles: [finance, support]}
  - {id: omar, roles: [operator]}
  - {id: gone, roles: [finance], disabled: true}
"""


@pytest.fixture
def users(tmp_path: Path) -> WatchedDirectory:
    path = tmp_path / "users.yaml"
    path.write_text(USERS)
    return WatchedDirectory(path)


def test_people_are_the_same_by_id_or_email_in_any_case(users: WatchedDirectory) -> None:
    d = users.current()
    assert d.same_person("maria", "maria.lopez@EXAMPLE.com")
    assert not d.same_person("maria", "dana@example.com")
    # Names the file does not know compare as they are written.
    assert d.same_person("Stranger@x.org", "stranger@x.org")
    assert d.get("gone") is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("users: [{id: a, email: x@y.z}, {id: b, email: X@y.z}]", "names two users"),
        ("users: [{id: 'has space'}]", "users.0.id"),
        ("users: [{id: a, role: [x]}]", "Extra inputs"),
        ("users: [", "not YAML"),
    ],
)
def test_a_bad_users_file_is_refused_with_its_reason(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        Directory.load(path)


def test_a_users_file_that_turns_bad_leaves_nobody_signed_in(users: WatchedDirectory, tmp_path: Path) -> None:
    assert users.current().get("dana") is not None
    (tmp_path / "users.yaml").write_text("users: [")
    assert users.current().get("dana") is None


@pytest.fixture
def auth(engine: Engine, users: WatchedDirectory, clock: FixedClock) -> Authenticator:
    tokens.create(engine)
    return Authenticator(engine, users, None, clock)


def issue(
    engine: Engine, clock: FixedClock, user: str = "dana", roles: list[str] | None = None, **kw: Any
) -> str:
    with engine.begin() as conn:
        _, secret = tokens.issue(conn, user_id=user, roles=roles or ["finance"], now=clock.now(), **kw)
    return secret


def test_a_token_names_its_user_and_only_the_roles_it_was_scoped_to(
    auth: Authenticator, engine: Engine, clock: FixedClock
) -> None:
    secret = issue(engine, clock, "maria", ["support"])
    who = auth.authenticate(secret)
    assert (who.user, who.roles, who.via, who.email) == (
        "maria",
        frozenset({"support"}),
        "token",
        "Maria.Lopez@example.com",
    )


def test_only_a_hash_of_the_token_is_stored(engine: Engine, clock: FixedClock) -> None:
    tokens.create(engine)
    secret = issue(engine, clock)
    with engine.connect() as conn:
        row = conn.execute(select(tokens.tokens)).one()
    assert secret.split("_", 2)[2] not in json.dumps([str(v) for v in row])


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("revoke", "is revoked"),
        ("expire", "is expired"),
        ("wrong_secret", "unknown token"),
        ("unknown_id", "unknown token"),
        ("not_a_token", "not a Charter token"),
        ("none", "no credentials"),
        ("user_removed", "no longer a user"),
    ],
)
def test_a_token_that_may_not_be_used_is_refused(  # noqa: PLR0917 - pytest fixtures
    auth: Authenticator, engine: Engine, clock: FixedClock, tmp_path: Path, change: str, fragment: str
) -> None:
    secret = issue(engine, clock, expires_at=clock.now() + timedelta(hours=1))
    token_id = secret.split("_")[1]
    presented: str | None = secret
    if change == "revoke":
        with engine.begin() as conn:
            assert tokens.revoke(conn, token_id, clock.now())
            assert not tokens.revoke(conn, token_id, clock.now())
    elif change == "expire":
        clock.advance(3601)
    elif change == "wrong_secret":
        presented = secret[:-4] + "AAAA"
    elif change == "unknown_id":
        presented = f"chr_{'0' * 16}_{secret.split('_', 2)[2]}"
    elif change == "not_a_token":
        presented = "Basic dXNlcjpwYXNz"
    elif change == "none":
        presented = None
    elif change == "user_removed":
        (tmp_path / "users.yaml").write_text(USERS.replace("dana", "dora"))
    with pytest.raises(Unauthenticated, match=fragment):
        auth.authenticate(presented)


def test_taking_a_role_from_a_user_takes_it_from_their_tokens(
    auth: Authenticator, engine: Engine, clock: FixedClock, tmp_path: Path
) -> None:
    secret = issue(engine, clock, "maria", ["finance", "support"])
    (tmp_path / "users.yaml").write_text(USERS.replace("roles: [finance, support]", "roles: [support]"))
    assert auth.authenticate(secret).roles == frozenset({"support"})


@pytest.mark.parametrize(
    ("roles", "permission", "allowed"),
    [
        ({"admin"}, Permission.MANAGE_TOKENS, True),
        ({"operator"}, Permission.MANAGE_TOKENS, False),
        ({"operator"}, Permission.PUBLISH, True),
        ({"operator"}, Permission.DECIDE, False),
        ({"auditor"}, Permission.READ_AUDIT, True),
        ({"auditor"}, Permission.DECIDE, False),
        ({"publisher"}, Permission.READ_RUNS, False),
        ({"finance"}, Permission.DECIDE, True),
        ({"finance"}, Permission.READ_ALL_APPROVALS, False),
        ({"finance"}, Permission.READ_AUDIT, False),
        (set(), Permission.READ_APPROVALS, False),
    ],
)
def test_roles_grant_what_they_say(roles: set[str], permission: Permission, allowed: bool) -> None:
    assert allows(roles, permission) is allowed


# OIDC ------------------------------------------------------------------------------------------

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ISSUER = "https://id.example.com"


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    """The identity provider's published keys, served over HTTP as a provider would."""
    jwk = json.loads(RSAAlgorithm.to_jwk(KEY.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json"
    server.shutdown()
    server.server_close()


def token(key: Any = KEY, alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "charter", "exp": now + 300, "iat": now, "sub": "u-1"}
    body |= {
        "preferred_username": "dana",
        "email": "dana@example.com",
        "realm_access": {"roles": ["finance"]},
    }
    body |= claims
    return jwt.encode(
        {k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers={"kid": "k1"}
    )


@pytest.fixture
def oidc_auth(tmp_path: Path, users: WatchedDirectory, clock: FixedClock, jwks_url: str) -> Authenticator:
    engine = make_engine(f"sqlite:///{tmp_path / 'tokens.db'}")
    tokens.create(engine)
    verifier = OidcVerifier(ISSUER, "charter", jwks_url, "preferred_username", "realm_access.roles")
    return Authenticator(engine, users, verifier, clock)


def test_a_jwt_from_the_provider_signs_a_person_in_with_its_roles(oidc_auth: Authenticator) -> None:
    who = oidc_auth.authenticate(token())
    assert (who.user, who.roles, who.via, who.email) == (
        "dana",
        frozenset({"finance"}),
        "oidc",
        "dana@example.com",
    )


@pytest.mark.parametrize(
    ("made", "fragment"),
    [
        (lambda: token(aud="someone-else"), "Audience"),
        (lambda: token(iss="https://evil.example.com"), "issuer"),
        (lambda: token(exp=int(time.time()) - 3600), "expired"),
        (lambda: token(key=OTHER), "Signature verification failed"),
        (lambda: token(exp=None), "exp"),
        # An HMAC token "signed" with a guessable secret is never accepted.
        (lambda: token(key="secret-shared-with-nobody-at-all", alg="HS256"), "invalid token"),
    ],
)
def test_a_jwt_that_does_not_verify_is_refused(oidc_auth: Authenticator, made: Any, fragment: str) -> None:
    with pytest.raises(Unauthenticated, match=fragment):
        oidc_auth.authenticate(made())


TENANTS = """
users:
  - {id: dana, roles: [finance]}
  - {id: ana, roles: [finance], tenants: [acme, globex]}
  - {id: root, roles: [admin], tenants: ["*"]}
"""


@pytest.fixture
def tenant_auth(engine: Engine, tmp_path: Path, clock: FixedClock) -> Authenticator:
    path = tmp_path / "tenants.yaml"
    path.write_text(TENANTS)
    tokens.create(engine)
    return Authenticator(engine, WatchedDirectory(path), None, clock, home_tenant="home")


@pytest.mark.parametrize(
    ("user", "scope", "acts_for"),
    [
        ("dana", None, {"home"}),  # granted none: the home tenant alone
        ("ana", None, {"acme", "globex"}),
        ("ana", ["acme"], {"acme"}),  # a token narrows its user's tenants
        ("ana", ["acme", "initech"], {"acme"}),  # and never widens them
        ("root", None, {"acme", "globex", "home", "initech"}),
        ("root", ["initech"], {"initech"}),
    ],
)
def test_a_token_acts_for_its_users_tenants_narrowed_by_its_scope(  # noqa: PLR0917 - pytest fixtures
    tenant_auth: Authenticator,
    engine: Engine,
    clock: FixedClock,
    user: str,
    scope: list[str] | None,
    acts_for: set[str],
) -> None:
    roles = ["admin"] if user == "root" else ["finance"]
    who = tenant_auth.authenticate(issue(engine, clock, user, roles, tenants=scope))
    assert {t for t in ("acme", "globex", "home", "initech") if who.acts_for(t)} == acts_for
    assert who.tenant_scope == (None if acts_for == {"acme", "globex", "home", "initech"} else acts_for)


def test_taking_a_tenant_from_a_user_takes_it_from_their_tokens(
    tenant_auth: Authenticator, engine: Engine, clock: FixedClock, tmp_path: Path
) -> None:
    secret = issue(engine, clock, "ana", tenants=["globex"])
    assert tenant_auth.authenticate(secret).acts_for("globex")
    (tmp_path / "tenants.yaml").write_text(TENANTS.replace("[acme, globex]", "[acme]"))
    assert tenant_auth.authenticate(secret).tenants == frozenset()


def test_a_jwt_names_its_tenants_in_a_claim_or_acts_for_the_home_tenant(
    tmp_path: Path, users: WatchedDirectory, clock: FixedClock, jwks_url: str
) -> None:
    verifier = OidcVerifier(ISSUER, "charter", jwks_url, "preferred_username", "realm_access.roles")
    auth = Authenticator(make_engine(f"sqlite:///{tmp_path / 't.db'}"), users, verifier, clock, "home")
    assert auth.authenticate(token(tenants=["acme"])).tenants == frozenset({"acme"})
    assert auth.authenticate(token()).tenants == frozenset({"home"})
