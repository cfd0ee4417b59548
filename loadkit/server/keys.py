"""Access keys: resolving the config's tiers and keys into concrete keys (random ones
where none is given), constant-time lookup, and the keys file (mode 0600)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadkit.server.config import ServerConfig

ADMIN_TIER = "admin"


@dataclass(frozen=True)
class AccessKey:
    label: str
    tier: str
    key: str
    admin: bool = False
    balance: float | None = None  # None: unlimited

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.key.encode()).digest()


def resolve_keys(
    cfg: ServerConfig, new_key: Callable[[], str] | None = None
) -> tuple[AccessKey, list[AccessKey]]:
    """(admin key, tier keys): generated ``{tier}-{i}`` keys first, then ``[[keys]]``."""
    make = new_key or (lambda: "lk-" + secrets.token_urlsafe(24))
    admin = AccessKey(cfg.admin.label, ADMIN_TIER, cfg.admin.key or make(), admin=True)
    out: list[AccessKey] = []
    for t in cfg.tiers:
        for i in range(1, t.keys + 1):
            out.append(AccessKey(f"{t.name}-{i}", t.name, make(), balance=t.balance))
    for k in cfg.keys:
        bal = k.balance if k.balance is not None else cfg.tier(k.tier).balance
        out.append(AccessKey(k.label, k.tier, k.key or make(), balance=bal))
    return admin, out


class KeyStore:
    """Find the key behind a bearer token without a timing side channel on its value."""

    def __init__(self, keys: Iterable[AccessKey]) -> None:
        self._by_digest: dict[bytes, AccessKey] = {k.digest: k for k in keys}
        self._by_label: dict[str, AccessKey] = {k.label: k for k in self._by_digest.values()}

    def lookup(self, token: str | None) -> AccessKey | None:
        if not token:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found = self._by_digest.get(digest)
        # The dict probe is on a hash of the digest; the final equality is constant time.
        if found is not None and hmac.compare_digest(found.digest, digest):
            return found
        return None

    def by_label(self, label: str) -> AccessKey:
        return self._by_label[label]

    def __iter__(self) -> Iterator[AccessKey]:
        return iter(self._by_label.values())


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def keys_document(admin: AccessKey, keys: list[AccessKey]) -> dict[str, Any]:
    return {
        "admin": {"label": admin.label, "key": admin.key},
        "keys": [{"label": k.label, "tier": k.tier, "key": k.key} for k in keys],
    }


def write_private_json(path: str | Path, doc: dict[str, Any]) -> None:
    """Write JSON atomically (tmp + rename) with mode 0600 from the first byte."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, p)
