"""What of a conversation the model is sent: the system prompt, the latest exchanges that fit a budget, the question."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

# {"role": "system" | "user" | "assistant", "content": ...}, as the chat-completions API takes it.
Message = dict[str, str]


@dataclass(frozen=True)
class Budget:
    """`characters` of content in all, system prompt and question included, stands in for the model's tokens
    (about 4 characters a token in English, 1 to 2 in Chinese); `exchanges`: earlier questions with their answers."""

    characters: int
    exchanges: int


def trimmed(system: Message, history: list[Message], question: Message, budget: Budget) -> list[Message]:
    """The system prompt and the question always; between them the latest earlier exchanges of `history`
    (user, assistant, user, assistant ...) while they fit, whole, so the model never sees an answer without
    its question."""
    exchanges = [history[start : start + 2] for start in range(0, len(history) - 1, 2)]
    used = len(system["content"]) + len(question["content"])
    kept: list[list[Message]] = []
    for exchange in reversed(exchanges[max(0, len(exchanges) - budget.exchanges) :]):
        size = sum(len(message["content"]) for message in exchange)
        if used + size > budget.characters:
            break
        kept.insert(0, exchange)
        used += size
    return [system, *chain.from_iterable(kept), question]
