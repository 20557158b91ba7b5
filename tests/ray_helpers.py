"""What the Ray tests look at inside the runtime."""

from __future__ import annotations


def live_actors(class_name: str) -> list[dict]:
    """The actors of the connected Ray runtime whose class name holds ``class_name``
    (Ray Data names them ``MapWorker(MapBatches(<class>))``), with their state and pid."""
    import ray

    return [
        actor
        for actor in ray._private.state.actors().values()
        if class_name in actor["ActorClassName"]
    ]
