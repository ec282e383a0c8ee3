"""Step code for the ``text`` queue, served by a worker that never sees the pipeline file
(``remote.py`` declares these steps with ``remote_step``)."""

import datetime as dt

from aexec import step


@step(name="shout", queue="text")
def shout(words: list[str], blob: bytes) -> dict[str, object]:
    return {
        "text": " ".join(word.upper() for word in words),
        "blob": blob[::-1],
        "pair": (len(words), len(blob)),
        "when": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
    }


@step(name="measure", queue="text")
async def measure(shouted: dict[str, object]) -> dict[str, object]:
    text = shouted["text"]
    blob = shouted["blob"]
    assert isinstance(text, str) and isinstance(blob, bytes), shouted
    assert shouted["pair"] == [2, 3], shouted  # msgpack carries a tuple as a list
    assert isinstance(shouted["when"], dt.datetime), shouted
    return {"length": len(text), "first_byte": blob[0], "blob": blob}
