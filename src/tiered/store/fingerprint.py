"""Stable keys for stored state: the SHA-256 of canonical JSON (sorted keys, no spaces)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def json_fingerprint(data: Any, *, ensure_ascii: bool = True) -> str:
    """Hex SHA-256 of ``data`` as canonical JSON: equal data, equal key, across runs.

    ``ensure_ascii`` is part of the key's definition: keys already stored with one setting
    must keep it (the response cache's use ``False``).
    """
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=ensure_ascii)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


__all__ = ["json_fingerprint"]
