"""Shared set-up of the test suite.

``python -m pytest -q tests`` runs everything, the tests marked ``slow`` included (whole pipelines,
benchmark scripts, Ray clusters, torchrun ranks, the d = 520 oracle): that is the command CI runs.
``python -m pytest -q tests -m "not slow"`` is the quick loop while developing. Property tests
bound their own examples (``settings(max_examples=...)`` on each), so neither run grows with
hypothesis's defaults. Helpers shared by the files live in helpers.py (comparisons, command
lines) and select_data.py (generated instances).
"""

import os

# No model hub here: without these a hub lookup hangs for ~50 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
