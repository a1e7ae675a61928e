"""``python -m spice``: the command line (see spice.cli)."""

from spice.cli import main

raise SystemExit(main())
