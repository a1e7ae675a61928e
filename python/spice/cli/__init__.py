"""The ``spice`` command line: features, select, run, online, report, demo.

Failures print ``spice: error: ...`` (the whole message, however many lines) and exit with status
1; ``--debug`` shows the traceback instead. Bad option values are refused before any work, with
status 2. A missing optional dependency names the extra that brings it.

Modules: ``parser`` (:func:`build_parser`), ``argtypes`` (the checked flag values), ``offline``
(``features``, ``select``, ``run``), ``online``, ``report_demo`` (``report``, ``demo``) and
``interrupt`` (what Ctrl-C leaves and how to go on); :func:`main` is here.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from .interrupt import _interrupted

# _extract_config and _select_options: read from spice.cli by the tests
from .offline import _extract_config, _select_options, cmd_features, cmd_run, cmd_select  # noqa: F401
from .online import cmd_online
from .parser import build_parser
from .report_demo import cmd_demo, cmd_report

__all__ = [
    "main",
    "build_parser",
    "cmd_features",
    "cmd_select",
    "cmd_run",
    "cmd_online",
    "cmd_report",
    "cmd_demo",
]


# optional dependencies -> the extra of spice-select that installs them
_EXTRAS = {
    "torch": "hf",
    "transformers": "hf",
    "peft": "hf",
    "tqdm": "hf",
    "safetensors": "hf",
    "tokenizers": "hf",
    "matplotlib": "report",
    "pyarrow": "parquet",
    "datasets": "hf-datasets",
}
_INSTALL = "pip install 'spice-select["


def _error_text(e: BaseException) -> str:
    """The whole message; a missing optional module names the extra that brings it."""
    if isinstance(e, ModuleNotFoundError) and e.name and _INSTALL not in str(e):
        root = e.name.split(".")[0]
        if root in _EXTRAS:
            return (
                f"this needs {root}, which is not installed: "
                f"pip install 'spice-select[{_EXTRAS[root]}]'"
            )
    text = str(e).strip()
    return text if text else type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.time()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(_interrupted(args, argv, started), file=sys.stderr)
        return 130
    except Exception as e:  # the whole message, no traceback unless --debug
        if args.debug:
            raise
        print(f"spice: error: {_error_text(e)}", file=sys.stderr)
        return 1
