"""Settings of the reward server (``prefkit serve``)."""

from __future__ import annotations

from dataclasses import dataclass

ALL_INTERFACES = ("0.0.0.0", "::", "")


@dataclass
class ServeConfig:
    """How ``prefkit serve`` listens, batches and limits requests."""

    host: str = "127.0.0.1"
    """Interface to bind; loopback unless asked otherwise."""
    port: int = 8000
    """TCP port; 0 picks a free one (the address is printed)."""
    api_keys: tuple[str, ...] = ()
    """Bearer tokens accepted on every endpoint but /health; empty: no authentication."""
    max_batch_items: int = 64
    """Most items (prompt, response pairs) scored in one model call."""
    max_batch_tokens: int = 32768
    """Most estimated tokens (characters / 4) in one model call; a larger request runs alone."""
    max_wait_ms: float = 0.0
    """How long the first request of a batch waits for others to join it. 0: a batch is
    what waits when the model is free; requests that arrive during a model call form the
    next one (bench/serve_load.py: items/s within 4% of a 5 ms wait at 8 and 64 clients,
    and no wait added for a lone client)."""
    max_queue_items: int = 4096
    """Items waiting to be scored; beyond it a request gets 503 with Retry-After."""
    max_request_bytes: int = 2 * 1024 * 1024
    """Largest request body (413 beyond)."""
    max_items: int = 512
    """Most items in one request (422 beyond)."""
    max_text_chars: int = 100_000
    """Longest prompt, response or query, in characters (422 beyond)."""
    request_timeout_s: float = 60.0
    """A request not answered within this time gets 504 (and its items are dropped if unscored)."""
    cross_request_batching: bool = True
    """Score the items of concurrent requests together; off: one model call per request."""
    retry_after_s: int = 1
    """Retry-After (seconds) sent with 503 answers."""

    def __post_init__(self) -> None:
        positive = {
            "max_batch_items": self.max_batch_items,
            "max_batch_tokens": self.max_batch_tokens,
            "max_queue_items": self.max_queue_items,
            "max_request_bytes": self.max_request_bytes,
            "max_items": self.max_items,
            "max_text_chars": self.max_text_chars,
            "request_timeout_s": self.request_timeout_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0; got {value}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0; got {self.max_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535; got {self.port}")
        if any(not key.strip() for key in self.api_keys):
            raise ValueError("an API key is empty; give non-empty keys")
        if self.max_queue_items < self.max_items:
            raise ValueError(
                f"max_queue_items ({self.max_queue_items}) must be >= max_items "
                f"({self.max_items}), or the largest allowed request could never be queued"
            )

    @property
    def binds_all_interfaces(self) -> bool:
        return self.host in ALL_INTERFACES
