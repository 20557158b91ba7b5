"""A small feedback set with a known true reward, generated deterministically.

The quickstart needs data that every machine has, that a reward model can learn
in seconds, and whose right answer is known, so the evaluation means something.
Each record is a factual question with one correct and one incorrect answer.
The true reward is correctness. Answer length is deliberately unrelated to it:
in half of the pairs the correct answer is the longer one, in the other half
the shorter, so a model that learned "longer is better" scores about 50% and
the report's length-bias section shows it.

All facts and phrasings are written here; nothing is copied from a data set.
"""

from __future__ import annotations

import random

from prefkit.data.records import PairwiseRecord

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "China": "Beijing",
    "India": "New Delhi",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Brazil": "Brasilia",
    "Argentina": "Buenos Aires",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Turkey": "Ankara",
    "Russia": "Moscow",
    "Australia": "Canberra",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Hungary": "Budapest",
    "Chile": "Santiago",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Morocco": "Rabat",
}
ANIMAL_SOUNDS = {
    "dog": "bark",
    "cat": "meow",
    "cow": "moo",
    "sheep": "baa",
    "lion": "roar",
    "duck": "quack",
    "horse": "neigh",
    "pig": "oink",
    "owl": "hoot",
    "snake": "hiss",
    "bee": "buzz",
    "frog": "croak",
    "wolf": "howl",
    "donkey": "bray",
    "crow": "caw",
    "mouse": "squeak",
}
COLORS = {
    "a ripe banana": "yellow",
    "fresh grass": "green",
    "a clear daytime sky": "blue",
    "snow": "white",
    "coal": "black",
    "a ripe tomato": "red",
    "a carrot": "orange",
    "a plum": "purple",
    "milk chocolate": "brown",
    "a flamingo": "pink",
    "an emerald": "green",
    "a lemon": "yellow",
}
OPPOSITES = {
    "hot": "cold",
    "tall": "short",
    "early": "late",
    "happy": "sad",
    "fast": "slow",
    "heavy": "light",
    "open": "closed",
    "full": "empty",
    "wet": "dry",
    "loud": "quiet",
    "rich": "poor",
    "hard": "soft",
    "young": "old",
    "strong": "weak",
    "clean": "dirty",
    "bright": "dark",
}

TOPICS: dict[str, tuple[dict[str, str], tuple[str, ...], tuple[str, ...]]] = {
    "capitals": (
        CAPITALS,
        (
            "What is the capital of {key}?",
            "Which city is the capital of {key}?",
            "Name the capital city of {key}.",
        ),
        (
            "{value}.",
            "The capital of {key} is {value}.",
            "That would be {value}, which is where the government of {key} sits and the capital of the country.",
        ),
    ),
    "animal-sounds": (
        ANIMAL_SOUNDS,
        (
            "What sound does a {key} make?",
            "How does a {key} sound?",
            "Which noise is typical of a {key}?",
        ),
        (
            "A {key} goes '{value}'.",
            "It makes a {value}.",
            "A {key} is known to {value}; that is the sound people usually describe for this animal.",
        ),
    ),
    "colors": (
        COLORS,
        (
            "What color is {key}?",
            "Which color do you see when you look at {key}?",
            "Name the usual color of {key}.",
        ),
        (
            "{value}.",
            "It is {value}.",
            "Usually {key} is {value}, and that is the color most people would name for it.",
        ),
    ),
    "opposites": (
        OPPOSITES,
        (
            "What is the opposite of '{key}'?",
            "Give the antonym of '{key}'.",
            "Which word means the reverse of '{key}'?",
        ),
        (
            "'{value}'.",
            "The opposite is '{value}'.",
            "The word that means the reverse of '{key}' is '{value}', the usual antonym in everyday English.",
        ),
    ),
}


def make_quickstart_pairs(*, seed: int = 0, pairs_per_question: int = 2) -> list[PairwiseRecord]:
    """Every question of every topic, ``pairs_per_question`` pairs each.

    Each pair has a correct answer (the true value) and an incorrect one (the
    value of another key of the same topic), answer styles of different length,
    and the correct answer on a random side (``a`` or ``b``). Which answer is
    longer is balanced: it alternates so that half the pairs prefer the longer
    answer. The same seed gives the same records.
    """
    rng = random.Random(seed)
    records: list[PairwiseRecord] = []
    count = 0
    for topic, (facts, questions, styles) in TOPICS.items():
        keys = list(facts)
        for key in keys:
            for question_index, question in enumerate(questions):
                for repeat in range(pairs_per_question):
                    wrong_key = rng.choice([other for other in keys if facts[other] != facts[key]])
                    short_style, long_style = sorted(rng.sample(styles, 2), key=len)
                    correct_is_longer = count % 2 == 0
                    correct_style, wrong_style = (
                        (long_style, short_style)
                        if correct_is_longer
                        else (short_style, long_style)
                    )
                    correct = correct_style.format(key=key, value=facts[key])
                    wrong = wrong_style.format(key=key, value=facts[wrong_key])
                    correct_first = rng.random() < 0.5
                    records.append(
                        PairwiseRecord(
                            id=f"{topic}-{keys.index(key)}-{question_index}-{repeat}",
                            prompt=question.format(key=key),
                            response_a=correct if correct_first else wrong,
                            response_b=wrong if correct_first else correct,
                            outcome="a" if correct_first else "b",
                            category=topic,
                            metadata={
                                "question": question_index,
                                "correct_is_longer": correct_is_longer,
                            },
                        )
                    )
                    count += 1
    return records


def split_by_question(
    records: list[PairwiseRecord], *, eval_question: int = 2
) -> tuple[list, list]:
    """Train on two phrasings of every question, evaluate on the held-out third."""
    train = [record for record in records if record.metadata["question"] != eval_question]
    held_out = [record for record in records if record.metadata["question"] == eval_question]
    return train, held_out
