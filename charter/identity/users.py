"""The people who use Charter, and their roles, from a YAML file (CHARTER_USERS_FILE):

    users:
      - id: dana                      # what decisions and the audit log name
        name: Dana Whitfield
        email: dana@example.com       # also matched when policy or an agent names an owner
        roles: [finance]
        tenants: [acme]               # whose runs and approvals they see; "*" for all

Roles are the built-in ones (admin, operator, auditor, publisher; see charter.identity.roles)
and any role a policy names for approvals (`@approval("finance")`). The file is read again
when it changes, so removing a user or a role takes effect without a restart, tokens included.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charter.errors import ConfigError

log = logging.getLogger(__name__)
NAME = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$"


class User(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=NAME)
    name: str | None = None
    email: str | None = None
    roles: list[str] = Field(default_factory=list)
    # None: the home tenant (CHARTER_TENANT) alone; "*": every tenant.
    tenants: list[str] | None = Field(None, min_length=1)
    disabled: bool = False


class UsersFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    users: list[User] = Field(default_factory=list)


class Directory:
    def __init__(self, users: list[User]) -> None:
        self._by_id = {u.id: u for u in users}
        self._by_alias: dict[str, User] = {}
        for user in users:
            for alias in (user.id, user.email):
                if alias is None:
                    continue
                key = alias.lower()
                if key in self._by_alias and self._by_alias[key] is not user:
                    raise ConfigError(f"users file: {alias!r} names two users")
                self._by_alias[key] = user

    @classmethod
    def load(cls, path: Path) -> Directory:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"no users file at {path} (CHARTER_USERS_FILE)") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
        try:
            parsed = UsersFile.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: {where}: {first['msg']}") from None
        return cls(parsed.users)

    def get(self, user_id: str) -> User | None:
        user = self._by_id.get(user_id)
        return None if user is None or user.disabled else user

    def resolve(self, name: str) -> User | None:
        """The user an id or e-mail address names, if any."""
        return self._by_alias.get(name.lower())

    def same_person(self, a: str, b: str) -> bool:
        """Whether two names (ids or e-mail addresses) are one person."""
        ua, ub = self.resolve(a), self.resolve(b)
        if ua is not None and ub is not None:
            return ua.id == ub.id
        return a.strip().lower() == b.strip().lower()

    def users(self) -> list[User]:
        return list(self._by_id.values())


class WatchedDirectory:
    """The users file, read again whenever it changes on disk. At start a bad file stops the
    service; later, a file that goes missing or turns invalid leaves nobody able to sign in
    until it is fixed (fail closed), and says why in the log."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp = self._stamp_of()
        self._directory = Directory.load(path)

    def _stamp_of(self) -> tuple[int, int] | None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> Directory:
        stamp = self._stamp_of()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._directory = Directory.load(self._path)
                log.info("users file %s reloaded: %d users", self._path, len(self._directory.users()))
            except ConfigError as exc:
                self._directory = Directory([])
                log.error("users file invalid, nobody can sign in until it is fixed: %s", exc)
        return self._directory
