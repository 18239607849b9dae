"""Ed25519 signatures on the events that carry authority.

Anyone who can write to a topic can write any event; Kafka ACLs are the first fence, these
signatures the second. Four services sign, each with a key of its own:
  - the planner signs every `ActionProposed` it sends; policy decides nothing else, so writing
    to `actions.proposed` does not make anyone an agent;
  - policy signs every executable `ActionApproved`; the executor runs nothing unsigned;
  - approvals signs the human decisions its authenticated API accepted (and its own expiry
    timer), which its consumer checks, and what a human's decision yields: the `ActionApproved`,
    which policy checks before it decides the action again, and an amended `ActionProposed`;
  - audit signs the heads of its Merkle tree (services/audit/checkpoint.py).
A signature covers the event's canonical JSON without the signature field: envelope, ids and
payload alike, so it cannot be moved to another action or replayed under another id.

Keys are PEM files in CHARTER_KEYS_DIR (default `<home>/keys`): `<name>.key` (private, mode
0600, only on the service that signs) and `<name>.pub`. `charter keys init` makes any missing.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from charter.errors import ConfigError
from charter.events import Event, canonical_json

SIGNERS = ("policy", "approvals", "audit", "planner")
FIELD = "signature"
E = TypeVar("E", bound=Event)


def private_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.key"


def public_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.pub"


def ensure_keys(directory: Path, names: tuple[str, ...] = SIGNERS) -> list[str]:
    """Create the key pairs that do not exist yet; return the names created."""
    directory.mkdir(parents=True, exist_ok=True)
    created = []
    for name in names:
        if private_path(directory, name).exists():
            continue
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Created 0600 from the start: the private key is never readable by others, not even briefly.
        fd = os.open(private_path(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        public_path(directory, name).write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        created.append(name)
    return created


def _payload(event: Event, field: str) -> bytes:
    return canonical_json(event.model_dump(mode="json", exclude={field})).encode()


class Signer:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def load(cls, directory: Path, name: str) -> Signer:
        path = private_path(directory, name)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise ConfigError(f"no signing key {path}: run `charter keys init`") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 private key")
        return cls(key)

    @property
    def verifier(self) -> Verifier:
        return Verifier(self._key.public_key())

    def sign_bytes(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def sign(self, event: E, field: str = FIELD) -> E:
        signature = self._key.sign(_payload(event, field))
        return event.model_copy(update={field: base64.urlsafe_b64encode(signature).decode()})


class Verifier:
    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    @classmethod
    def load(cls, directory: Path, name: str) -> Verifier:
        path = public_path(directory, name)
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"no public key {path}: run `charter keys init`") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{path} is not an Ed25519 public key")
        return cls(key)

    @classmethod
    def from_pem(cls, pem: bytes) -> Verifier:
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError("not an Ed25519 public key")
        return cls(key)

    def pem(self) -> bytes:
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def key_id(self) -> str:
        """SHA-256 of the raw public key, hex: names the key in what it signed."""
        raw = self._key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()

    def verify_bytes(self, data: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def verify(self, event: Event, field: str = FIELD) -> bool:
        signature = getattr(event, field, None)
        if not isinstance(signature, str):
            return False
        try:
            self._key.verify(base64.urlsafe_b64decode(signature.encode()), _payload(event, field))
        except (InvalidSignature, ValueError):
            return False
        return True
