"""The step that nobody served in ``unserved.py``, served at last: each execution appends
``run_id pid`` to the file named by ``$LATE_LOG``, so a test knows whether it ran."""

import os

from aexec import current, step


@step(name="nobody_serves_this", queue="unserved")
def served_late() -> str:
    with open(os.environ["LATE_LOG"], "a", encoding="utf-8") as fh:
        fh.write(f"{current().run_id} {os.getpid()}\n")
    return "served late"
