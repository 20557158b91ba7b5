"""The reward HTTP server (``prefkit serve``) and its client.

``prefkit.serve.RewardClient`` needs only httpx; the server itself
(:mod:`prefkit.serve.app`) needs the ``serve`` extra (FastAPI, uvicorn) and is
imported only when it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefkit.serve.client import RewardClient, RewardClientError

__all__ = ["RewardClient", "RewardClientError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from prefkit.serve import client

        return getattr(client, name)
    raise AttributeError(f"module 'prefkit.serve' has no attribute {name!r}")
