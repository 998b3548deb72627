"""Bearer keys: who is calling. Keys come from a file or an environment variable.

Entries are ``name: secret`` or a bare ``secret`` (named ``key-<first 8 hex of its
SHA-256>``); ``#`` starts a comment. Only SHA-256 digests are kept in memory, and only
key *names* ever reach logs, metrics and budgets.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from tiered.core.limits import name_problem
from tiered.errors import ConfigError
from tiered.serve.config import AuthSettings
from tiered.serve.errors import AuthenticationError

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a key's name (``anonymous`` when the gateway has no keys)."""

    name: str


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def parse_key_entries(text: str, *, source: str, split_commas: bool = False) -> dict[str, str]:
    """``{secret: name}`` from key entries (one per line, or comma-separated)."""
    out: dict[str, str] = {}
    lines = text.replace(",", "\n").splitlines() if split_commas else text.splitlines()
    for n, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if ":" in line:
            name, secret = (x.strip() for x in line.split(":", 1))
        else:
            name, secret = "", line
        if not secret or any(c.isspace() for c in secret):
            # the message never shows the secret itself
            raise ConfigError(f"key entry {n} of {source} is malformed (empty or has spaces)")
        name = name or f"key-{_digest(secret).hex()[:8]}"
        problem = name_problem(name, "a key name")
        if problem is not None:  # names reach logs and metrics: one short printable line
            raise ConfigError(f"key entry {n} of {source}: {problem}")
        out[secret] = name
    return out


class KeyRing:
    """Checks ``Authorization: Bearer <key>`` headers against the configured keys."""

    def __init__(self, keys: dict[str, str] | None = None) -> None:
        # digest -> name; a dict lookup on digests does not leak the secret by timing
        self._names = {_digest(secret): name for secret, name in (keys or {}).items()}

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> KeyRing:
        keys: dict[str, str] = {}
        if auth.keys_file is not None:
            path = Path(auth.keys_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read keys file: {exc.strerror}", path=path) from None
            except UnicodeDecodeError as exc:  # the message never shows the bytes (secrets)
                raise ConfigError(
                    f"keys file is not valid UTF-8 (at byte {exc.start:,})", path=path
                ) from None
            keys.update(parse_key_entries(text, source=str(path)))
        if auth.keys_env is not None:
            value = os.environ.get(auth.keys_env)
            if value is None:
                raise ConfigError(
                    f"environment variable {auth.keys_env} (auth.keys_env) is not set",
                    field="auth.keys_env",
                )
            keys.update(parse_key_entries(value, source=f"${auth.keys_env}", split_commas=True))
        if (auth.keys_file or auth.keys_env) and not keys:
            raise ConfigError("auth names a keys file/variable, but it holds no keys", field="auth")
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._names)

    @property
    def names(self) -> list[str]:
        return sorted(set(self._names.values()))

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller named by an ``Authorization`` header; 401 when it names nobody."""
        if not self._names:
            return Principal(ANONYMOUS)
        if not authorization:
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key"
            )
        scheme, _, token = authorization.partition(" ")
        name = self._names.get(_digest(token.strip())) if scheme.lower() == "bearer" else None
        if name is None:
            raise AuthenticationError("invalid API key")
        return Principal(name)


__all__ = ["ANONYMOUS", "KeyRing", "Principal", "parse_key_entries"]
