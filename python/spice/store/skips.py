"""Why a row got no features: the skip reasons a store's ``skipped.jsonl`` names."""

from __future__ import annotations

from collections.abc import Iterable

# Why a row got no features; the first of these among a skipped row's flags is its reason.
SKIP_REASONS = {
    "invalid_record": "the record is malformed (read with invalid='skip')",
    "empty_conversation": "the conversation has no messages",
    "no_user_turn_before_assistant": "no assistant turn follows a user turn",
    "no_assistant_turn": "the conversation has no assistant turn",
    "empty_response": "nothing is left to learn: the response is empty",
    "template_error": "the tokenizer's chat template refused the conversation",
}


def skip_reason(flags: Iterable[str]) -> str:
    """The reason a skipped row was skipped, from its flags ("" when it was not skipped)."""
    flags = tuple(flags)
    if "skipped" not in flags:
        return ""
    return next((f for f in SKIP_REASONS if f in flags), "other")
