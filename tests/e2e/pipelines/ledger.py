"""A step that appends its ``tag`` to the file ``ledger`` each time it runs, so a test knows
exactly what ran (and that forged messages did not)."""

from aexec import pipeline, step


@step
def record(ledger: str, tag: str) -> str:
    with open(ledger, "a", encoding="utf-8") as fh:
        fh.write(tag + "\n")
    return tag


@pipeline
def ledger(ledger: str, tag: str) -> object:
    return record(ledger, tag)
