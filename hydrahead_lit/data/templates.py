"""The fixed wording of the synthetic retrieval tasks (RULER's headers), and rendered examples of every task.

A leaf: the sample builder (:mod:`hydrahead_lit.data.synthetic`) lays these texts out, and the demo
tokenizer (:mod:`hydrahead_lit.data.demo`) is trained on :func:`template_texts` so that their words
become tokens.
"""

from __future__ import annotations

NIAH_HEADER = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards.\n"
)
PASSKEY_HEADER = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n"
)
MQAR_HEADER = "Memorize the number that goes with each name in the following list.\n"
VT_HEADER = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"


def template_texts() -> list[str]:
    """Rendered task templates (used to give the demo tokenizer tokens for their words)."""
    return [
        NIAH_HEADER,
        PASSKEY_HEADER,
        MQAR_HEADER,
        VT_HEADER,
        "One of the special magic numbers for quiet-river is: 1234567.",
        "What are all the special magic numbers for quiet-river, red-fox and old-tower mentioned in the "
        "provided text? The special magic numbers for quiet-river mentioned in the provided text are "
        "7654321.",
        "The pass key is 12345. Remember it. 12345 is the pass key. What is the pass key? The pass key is 12345.",
        "quiet-river: 1234. What are the numbers for quiet-river and red-fox? The numbers are 1234, 5678.",
        "VAR ABCDE = 12345. VAR FGHIJ = VAR ABCDE. Question: Find all variables that are assigned the "
        "value 12345 in the text above. Answer: According to the chain(s) of variable assignment in the "
        "text above, 2 variables are assigned the value 12345, they are: ABCDE FGHIJ",
    ]
