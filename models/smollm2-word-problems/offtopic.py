"""Questions that are not arithmetic word problems: the stack answers them with a refusal.

General knowledge, requests (write, translate, explain), chat, questions about numbers that are
not a calculation ("How tall is ...?"), and near misses that look like a word problem but ask
nothing to compute ("Sam has 12 pencils. What color are they?"). Topics and fillers come in a
train and a held-out pool. Pure Python.
"""

from __future__ import annotations

import random
from typing import Literal

Split = Literal["train", "heldout"]

POOLS: dict[str, dict[Split, tuple[str, ...]]] = {
    "country": {
        "train": (
            "Germany",
            "Spain",
            "Italy",
            "Japan",
            "Brazil",
            "Canada",
            "Kenya",
            "India",
            "Egypt",
            "Mexico",
            "Peru",
            "Norway",
            "Poland",
            "Chile",
            "Greece",
            "Turkey",
        ),
        "heldout": ("Portugal", "Vietnam", "Argentina"),
    },
    "city": {
        "train": ("Paris", "Tokyo", "Berlin", "Madrid", "Cairo", "Toronto", "Lima", "Oslo"),
        "heldout": ("Sydney", "Nairobi"),
    },
    "topic": {
        "train": (
            "cats",
            "the ocean",
            "winter",
            "friendship",
            "the moon",
            "dogs",
            "school",
            "robots",
            "trees",
            "rain",
            "music",
            "football",
            "space",
            "dinosaurs",
            "pizza",
        ),
        "heldout": ("volcanoes", "the desert"),
    },
    "science": {
        "train": (
            "photosynthesis",
            "gravity",
            "electricity",
            "a rainbow",
            "the internet",
            "a volcano",
            "digestion",
            "magnetism",
            "an engine",
            "the heart",
        ),
        "heldout": ("a black hole", "vaccines"),
    },
    "task": {
        "train": (
            "bake bread",
            "tie a tie",
            "learn to swim",
            "plant tomatoes",
            "fix a flat tire",
            "write a letter",
            "make friends",
            "train a puppy",
            "sleep better",
            "cook rice",
        ),
        "heldout": ("change a light bulb", "start a garden"),
    },
    "book": {
        "train": ("Hamlet", "Don Quixote", "War and Peace", "Pride and Prejudice", "Dracula"),
        "heldout": ("Moby Dick", "Frankenstein"),
    },
    "person": {
        "train": ("Albert Einstein", "Marie Curie", "Mozart", "Napoleon", "Cleopatra"),
        "heldout": ("Isaac Newton", "Frida Kahlo"),
    },
    "animal": {
        "train": ("spider", "horse", "cat", "bird", "bee", "cow", "frog", "duck"),
        "heldout": ("crab", "snake"),
    },
    "lang": {"train": ("French", "Spanish", "German", "Italian"), "heldout": ("Japanese",)},
    "phrase": {
        "train": ("good morning", "thank you", "where is the station", "I like apples"),
        "heldout": ("see you tomorrow",),
    },
    "form": {"train": ("poem", "story", "song", "haiku"), "heldout": ("limerick",)},
    "media": {"train": ("book", "movie", "song", "game"), "heldout": ("podcast",)},
    "landmark": {
        "train": ("the Eiffel Tower", "Mount Everest", "the Statue of Liberty", "Big Ben"),
        "heldout": ("the Great Pyramid",),
    },
    "color": {"train": ("blue", "green", "red"), "heldout": ("yellow",)},
}

TEMPLATES: dict[Split, tuple[str, ...]] = {
    "train": (
        "What is the capital of {country}?",
        "Who is the president of {country}?",
        "What language do people speak in {country}?",
        "Who wrote {book}?",
        "Who was {person}?",
        "When was {person} born?",
        "Translate '{phrase}' into {lang}.",
        "Write a {form} about {topic}.",
        "Tell me a joke about {topic}.",
        "How do I {task}?",
        "Can you explain {science}?",
        "What is {science}?",
        "What is the weather like in {city} today?",
        "What time is it in {city}?",
        "Can you recommend a good {media}?",
        "How many legs does a {animal} have?",
        "What does a {animal} eat?",
        "How tall is {landmark}?",
        "Why is the sky {color}?",
        "Hello!",
        "How are you?",
        "What is your name?",
        "Thank you!",
        "Who made you?",
        "What is the meaning of life?",
        "{Nc} has {x}. What color are they?",
        "{Nc} has {x}. Where does {P} keep them?",
        "{Nc} bought {x}. Why did {P} buy them?",
        "{Nc} is {d} years old. What is {pos} favorite food?",
        "Is {d} an even number?",
        "What is the biggest {animal} in the world?",
        "Give me three facts about {topic}.",
    ),
    "heldout": (
        "Name a famous painting by {person}.",
        "Which river flows through {city}?",
        "{Nc} has {x}. Are they new?",
    ),
}


def question(rng: random.Random, split: Split, who: dict[str, str], things: str) -> str:
    """One out-of-scope question; ``who`` and ``things`` fill the near-miss templates."""
    pool = TEMPLATES["heldout"] if split == "heldout" and rng.random() < 0.5 else TEMPLATES["train"]
    template = rng.choice(pool)
    fields = {k: rng.choice(v[split]) for k, v in POOLS.items()}
    fields.update(who)
    fields.update(x=things, d=str(rng.randint(2, 99)))
    return template.format(**fields)
