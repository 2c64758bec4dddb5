"""A small English lexicon for the procedural demo corpus and the synthetic filler.

Every word here was chosen for this project; the lists are small on purpose so that a
~1M-parameter teacher can learn the whole vocabulary of the bundled demo.
"""

from __future__ import annotations

NAMES: tuple[str, ...] = (
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Ella",
    "Felix",
    "Grace",
    "Henry",
    "Iris",
    "Jack",
    "Lena",
    "Max",
    "Nora",
    "Oscar",
    "Paula",
    "Sam",
    "Tara",
    "Victor",
    "Wendy",
    "Zoe",
)

# Singular nouns; plurals are regular ("+s", "+es" after s/x/ch/sh) except where listed.
NOUNS: tuple[str, ...] = (
    "apple", "basket", "bird", "boat", "book", "bottle", "box", "bridge", "brother", "cake",
    "candle", "car", "cat", "chair", "child", "city", "cloud", "coat", "cook", "cup",
    "doctor", "dog", "door", "dream", "farmer", "field", "fish", "flower", "forest", "fox",
    "friend", "garden", "gate", "girl", "glass", "hat", "hill", "horse", "house", "island",
    "key", "king", "lake", "lamp", "leaf", "letter", "map", "market", "mill", "moon",
    "mountain", "mouse", "nurse", "painter", "paper", "path", "pencil", "queen", "rabbit", "river",
    "road", "rock", "room", "sailor", "school", "sheep", "ship", "shop", "singer", "sister",
    "song", "star", "stone", "storm", "street", "student", "table", "teacher", "tower", "town",
    "train", "tree", "valley", "village", "wall", "window", "wolf", "word", "world", "writer",
)  # fmt: skip

IRREGULAR_PLURALS: dict[str, str] = {
    "child": "children", "city": "cities", "fish": "fish", "leaf": "leaves", "mouse": "mice",
    "sheep": "sheep", "wolf": "wolves",
}  # fmt: skip

# Nouns that name people or animals: they can be subjects of intransitive verbs.
ANIMATE: frozenset[str] = frozenset(
    ("bird", "brother", "cat", "child", "cook", "doctor", "dog", "farmer", "fish", "fox", "friend",
     "girl", "horse", "king", "mouse", "nurse", "painter", "queen", "rabbit", "sailor", "sheep",
     "singer", "sister", "student", "teacher", "wolf", "writer")
)  # fmt: skip

ADJECTIVES: tuple[str, ...] = (
    "big", "black", "blue", "bright", "brown", "calm", "cold", "dark", "empty", "famous",
    "gentle", "golden", "green", "happy", "heavy", "hidden", "kind", "large", "little", "lonely",
    "loud", "new", "old", "pale", "proud", "quick", "quiet", "red", "round", "sad",
    "silent", "silver", "small", "soft", "strange", "strong", "tall", "warm", "white", "wild",
    "wise", "yellow", "young",
)  # fmt: skip

# (present, past) of verbs that take an object.
TRANSITIVE: tuple[tuple[str, str], ...] = (
    ("bring", "brought"), ("build", "built"), ("carry", "carried"), ("catch", "caught"),
    ("clean", "cleaned"), ("draw", "drew"), ("find", "found"), ("follow", "followed"),
    ("give", "gave"), ("hear", "heard"), ("help", "helped"), ("hold", "held"), ("keep", "kept"),
    ("like", "liked"), ("lose", "lost"), ("make", "made"), ("open", "opened"), ("paint", "painted"),
    ("read", "read"), ("remember", "remembered"), ("see", "saw"), ("sell", "sold"),
    ("take", "took"), ("visit", "visited"), ("watch", "watched"), ("write", "wrote"),
)  # fmt: skip

# (present, past) of verbs without an object.
INTRANSITIVE: tuple[tuple[str, str], ...] = (
    ("arrive", "arrived"), ("dance", "danced"), ("laugh", "laughed"), ("listen", "listened"),
    ("rest", "rested"), ("run", "ran"), ("sing", "sang"), ("sit", "sat"), ("sleep", "slept"),
    ("smile", "smiled"), ("swim", "swam"), ("travel", "traveled"), ("wait", "waited"),
    ("walk", "walked"), ("wander", "wandered"), ("whisper", "whispered"), ("work", "worked"),
)  # fmt: skip

ADVERBS: tuple[str, ...] = (
    "quietly", "slowly", "quickly", "happily", "carefully", "loudly", "softly", "often", "again",
    "together",
)  # fmt: skip

PREPOSITIONS: tuple[str, ...] = (
    "near", "behind", "under", "beside", "above", "across", "inside", "around", "beyond", "along",
)  # fmt: skip

TIMES: tuple[str, ...] = (
    "In the morning", "At night", "After the storm", "Before dawn", "On Monday", "Later that day",
    "Every summer", "Once upon a time", "In the evening", "During the winter", "Long ago",
    "The next day",
)  # fmt: skip

CONNECTIVES: tuple[str, ...] = ("because", "while", "when", "after", "before", "and", "but")

# Opening phrases of reported speech; keeps "said" and quotes in the vocabulary.
SPEECH: tuple[str, ...] = ("said", "asked", "told the others", "answered", "wrote")


def plural(noun: str) -> str:
    """English plural of a lexicon noun."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"
