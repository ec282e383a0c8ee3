"""``python -m aexec``: the command line."""

from aexec.cli.main import main

raise SystemExit(main())
