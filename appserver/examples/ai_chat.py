"""A chat bot on a language model: `WXRELAY_BOT=appserver.examples.ai_chat:bot`, with `WXRELAY_AI_BASE_URL`
(and `WXRELAY_AI_API_KEY`, `WXRELAY_AI_MODEL`) naming an OpenAI-compatible chat-completions API.

The model is awaited, never called synchronously: a slow answer costs the worker a coroutine, not a thread. It
sets no deadline of its own shorter than the worker's soft time limit: the relay keeps WeChat waiting (a passive
reply within about 14 s) and a later answer goes out as a late reply, as the account's late-reply policy says.

Each user's conversation is kept in `msg.session`. The session's lock is taken when the history is read and held
until the handler returns and the answer is stored, so an exchange is written whole. In an async handler that
lock is tried once, not waited for: a user's second message while the model still works on the first cannot have
the session. It is answered at once that the bot is still thinking, and is not kept; asked again once the first
answer is in, it goes to the model with that answer in the history.
"""

from __future__ import annotations

import logging
from functools import cache

from appserver import Bot
from appserver.examples.completions import ChatCompletions, CompletionError
from appserver.examples.history import Budget, Message, trimmed
from appserver.session import SessionBusy
from common.settings import Settings
from wechat.messages import TextMessage

log = logging.getLogger("wxrelay.examples.ai_chat")

SYSTEM_PROMPT = "You are a helpful assistant in a WeChat chat, read on a phone: answer briefly, in the user's language."
BUDGET = Budget(characters=6000, exchanges=10)
APOLOGY = "Sorry, I cannot answer right now. Please try again in a moment."
BUSY = "I am still thinking about your previous message. Ask me again once I have answered it."
# Kept of the worker's soft time limit, which cancels the handler, for the apology to be answered.
ANSWER_MARGIN = 1.0

bot = Bot()


@cache
def model() -> ChatCompletions:
    # The worker's own settings: its environment over its env file (WXRELAY_ENV_FILE).
    settings = Settings.from_env()
    deadline = max(1.0, settings.task_soft_time_limit - ANSWER_MARGIN)
    return ChatCompletions(settings.ai_base_url, settings.ai_api_key, settings.ai_model, deadline)


@bot.text()
async def chat(msg: TextMessage) -> str:
    session = msg.session  # type: ignore[attr-defined]
    try:
        history: list[Message] = list(session.get("history", []))
    except SessionBusy:
        return BUSY
    system = {"role": "system", "content": SYSTEM_PROMPT}
    messages = trimmed(system, history, {"role": "user", "content": msg.content}, BUDGET)
    try:
        answer = await model().answer(messages)
    except CompletionError as exc:
        # The question is not kept: the next request goes without an exchange the user never saw answered.
        log.error("ai_chat: no answer for %s: %s", msg.source, exc)
        return APOLOGY
    session["history"] = [*messages[1:], {"role": "assistant", "content": answer}]
    return answer
