"""Login tokens, sessions, CSRF tokens and the login rate limit.

Tokens are 32 random bytes (URL-safe base64); only their SHA-256 is stored, so a
copy of the database does not let anyone log in. A plain hash is enough here
because the tokens are random and long, not chosen by people.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison (a CSRF token must not leak through timing)."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class FailureLimiter:
    """At most ``limit`` failures per ``window_s`` seconds per key (a client address).

    In memory, per server process: a restart forgets it, which is acceptable for a
    limit that only slows guessing (a token has 256 random bits).
    """

    def __init__(self, limit: int, window_s: float = 60.0, clock=time.monotonic):
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str) -> deque[float]:
        now = self._clock()
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again (0 = now)."""
        with self._lock:
            failures = self._recent(key)
            if len(failures) < self.limit:
                return 0.0
            return max(0.0, failures[0] + self.window_s - self._clock())

    def failed(self, key: str) -> None:
        with self._lock:
            self._recent(key).append(self._clock())
            if len(self._failures) > 10_000:  # bound the memory an attacker can make us use
                for stale in [k for k, v in self._failures.items() if not v][:5_000]:
                    del self._failures[stale]
