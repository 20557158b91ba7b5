"""The order in which items are offered: random (seeded), or the most uncertain first.

Uncertainty order ranks items by how close the reward model's margin is to zero,
so people label what the model cannot tell apart (the routing idea of Hybrid
Preferences, Miranda et al. 2024, with the reward margin as the signal):

- pairwise: margin = r(a) - r(b);
- ranking: the smallest gap between two responses' rewards;
- binary: r(response) minus the median reward over the project's items.

Equal margins keep a seeded random order. Priorities are ranks (0 = offered first).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefkit.annotate.tasks import text_for_model


def random_priorities(n_items: int, seed: int) -> list[float]:
    """A seeded random permutation of ``0 .. n_items - 1``."""
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    return [float(rank) for rank in order]


def uncertainty_priorities(margins: Sequence[float], seed: int) -> list[float]:
    """Rank items by ``|margin|`` ascending; ties broken by a seeded random order."""
    tie_break = random_priorities(len(margins), seed)
    ranked = sorted(range(len(margins)), key=lambda i: (abs(margins[i]), tie_break[i]))
    priorities = [0.0] * len(margins)
    for rank, index in enumerate(ranked):
        priorities[index] = float(rank)
    return priorities


def reward_margins(
    reward_dir: str | Path, task: str, contents: Sequence[dict[str, Any]]
) -> list[float]:
    """Each item's reward-model margin (see the module docstring).

    The only place the annotation app touches a reward model:
    ``RewardModel.load(folder).score(prompts, responses)``.
    """
    from prefkit.rm.model import RewardModel

    if task not in ("pairwise", "ranking", "binary"):
        raise ValueError(f"no reward margin for {task} items")
    model = RewardModel.load(reward_dir)
    prompts: list[str] = []
    responses: list[str] = []
    for content in contents:
        prompt = text_for_model(content["prompt"])
        for response in content["responses"]:
            prompts.append(prompt)
            responses.append(text_for_model(response))
    rewards = [float(value) for value in model.score(prompts, responses)] if prompts else []
    margins: list[float] = []
    position = 0
    for content in contents:
        item_rewards = rewards[position : position + len(content["responses"])]
        position += len(content["responses"])
        if task == "pairwise":
            margins.append(item_rewards[0] - item_rewards[1])
        elif task == "ranking":
            ordered = sorted(item_rewards)
            margins.append(min(high - low for low, high in zip(ordered, ordered[1:])))
        else:
            margins.append(item_rewards[0])
    if task == "binary" and margins:
        ordered = sorted(margins)
        middle = len(ordered) // 2
        median = (
            ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        )
        margins = [margin - median for margin in margins]
    return margins
