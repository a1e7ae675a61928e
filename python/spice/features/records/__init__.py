"""Loading instruction data and turning records into token ids with a loss mask.

Accepted record shapes (one JSON object per record):

- alpaca: ``instruction``, optional ``input``, ``output``;
- prompt/response: ``prompt`` and ``response`` (or ``completion``);
- chat: ``messages`` = list of ``{"role", "content"}``; rendered with the tokenizer's chat template
  when it has one, else a plain ``role:\\ncontent\\n`` layout; the loss covers the assistant turns;
- ShareGPT: ``conversations`` = list of ``{"from", "value"}`` (mapped to chat roles).

An optional ``id`` (str or int) names the record; otherwise its 0-based position is its id.
Files: JSONL, JSON (an array of objects), Parquet, Arrow, a ``datasets`` ``save_to_disk`` folder,
a ``datasets.Dataset`` (or a ``DatasetDict`` and a split), or a list of dicts; ``columns`` maps
the fields of an unusual schema (:mod:`spice.hfdata`).
Malformed input raises :class:`RecordError` naming the file and line (or row); with
``invalid="skip"`` such a record is kept as a skipped row instead (reason ``invalid_record``).

Records that are well formed but carry nothing to learn from are never an error: they are kept,
in place, as *skipped* records (``Record.skip`` names the reason) so that every input row keeps
its row number, and feature extraction gives them a zero row. The rules (docs/data.md):

- a conversation with no messages: ``empty_conversation``;
- assistant turns before the first user turn are dropped (the record is flagged
  ``dropped_leading_turns``); a conversation with no assistant turn after a user turn:
  ``no_user_turn_before_assistant`` (or ``no_assistant_turn`` when it has a user turn);
- a record whose responses all have no visible content (empty, whitespace, zero-width or other
  invisible characters, punctuation or symbols only: :func:`_visible`): ``empty_response``.

Truncation to ``max_length`` tokens keeps the response: whole leading exchanges of a conversation
are dropped first (the last turns are kept), then the prompt is cut from the left down to a quarter
of ``max_length`` tokens, and only then is the response cut from the right.
"""

from __future__ import annotations

from ...errors import RecordError
from .parsing import ALPACA_PROMPT, ALPACA_PROMPT_WITH_INPUT, Record, parse_record
from .readers import DataSource, data_fingerprint, file_sha256, load_records
from .tokenization import TokenizedRecord, tokenize_record

__all__ = [
    "Record",
    "RecordError",
    "TokenizedRecord",
    "load_records",
    "data_fingerprint",
    "file_sha256",
    "parse_record",
    "tokenize_record",
    "ALPACA_PROMPT",
    "ALPACA_PROMPT_WITH_INPUT",
    "DataSource",
]
