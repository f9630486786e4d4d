"""Readable run names: `crimson-otter`, as users know them from Prefect."""

from __future__ import annotations

import random

ADJECTIVES = (
    "amber", "ancient", "autumn", "bold", "brave", "bright", "calm", "clever", "cobalt", "cosmic",
    "crimson", "curious", "daring", "dapper", "eager", "emerald", "fearless", "fiery", "gentle",
    "golden", "graceful", "hidden", "humble", "icy", "indigo", "jolly", "keen", "lively", "lucky",
    "magic", "mellow", "misty", "noble", "olive", "patient", "polar", "proud", "quick", "quiet",
    "rapid", "rustic", "sandy", "scarlet", "silent", "silver", "smooth", "snowy", "solar", "spry",
    "steady", "stellar", "sunny", "swift", "tidy", "tranquil", "vivid", "wandering", "wise", "witty",
    "zealous",
)
ANIMALS = (
    "albatross", "antelope", "badger", "beaver", "bison", "bobcat", "caribou", "cheetah", "condor",
    "coyote", "crane", "dingo", "dolphin", "eagle", "falcon", "ferret", "finch", "fox", "gazelle",
    "gecko", "heron", "ibex", "jaguar", "koala", "lemur", "leopard", "lynx", "magpie", "marmot",
    "marten", "meerkat", "mongoose", "moose", "narwhal", "ocelot", "octopus", "orca", "osprey",
    "otter", "owl", "panda", "panther", "pelican", "penguin", "puffin", "quokka", "raven", "salmon",
    "seal", "sparrow", "stork", "swan", "tapir", "tiger", "toucan", "walrus", "weasel", "wolf",
    "wombat", "yak",
)

_rng = random.SystemRandom()


def generate_name() -> str:
    """An adjective-animal name such as ``crimson-otter``."""
    return f"{_rng.choice(ADJECTIVES)}-{_rng.choice(ANIMALS)}"
