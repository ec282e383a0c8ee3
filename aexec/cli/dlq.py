"""``aexec dlq list | replay``: the dead letters on the broker, shown and sent back."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from aexec.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    broker_command,
    resolve_settings,
    run_async,
)

if TYPE_CHECKING:
    from aexec.dlq import Described


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from aexec.dlq import describe
    from aexec.service import dead_letters, with_connect_timeout

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    settings = with_connect_timeout(resolve_settings(args))
    letters = run_async(broker_command(dead_letters(settings, limit=args.limit)))
    described = [describe(letter) for letter in letters]
    if args.json:
        from aexec.cli.display import dump_json

        for item in described:
            sys.stdout.write(dump_json(item.to_dict()) + "\n")
    elif described:
        sys.stdout.write(dead_letters_table(described) + "\n")
    else:
        sys.stderr.write("no dead letters\n")
    return EXIT_OK


def dead_letters_table(described: list[Described]) -> str:
    import time

    from aexec.cli.display import format_seconds, short_id, table

    now = time.time()
    rows = []
    for item in described:
        letter = item.letter
        age = None if letter.dead_at is None else max(0.0, now - letter.dead_at)
        rows.append(
            [
                letter.id,
                format_seconds(age),
                letter.queue or "?",
                item.kind or "malformed",
                "-" if item.run_id is None else short_id(item.run_id),
                item.step or "-",
                letter.reason,
            ]
        )
    return table(["ID", "AGE", "QUEUE", "KIND", "RUN", "STEP", "REASON"], rows)


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from aexec.service import replay_dead_letters, with_connect_timeout

    if args.all == bool(args.ids):
        raise UsageError("name the dead letters to replay (IDs from `aexec dlq list`), or --all")
    settings = with_connect_timeout(resolve_settings(args))
    ids = None if args.all else set(args.ids)
    replays = run_async(broker_command(replay_dead_letters(settings, ids)))
    failed = 0
    for replay in replays:
        letter = replay.letter
        if replay.error is None:
            sys.stdout.write(f"replayed {letter.id} to {letter.queue}\n")
        else:
            failed += 1
            sys.stdout.write(f"left {letter.id} in the dead-letter queue: {replay.error}\n")
    missing = sorted((ids or set()) - {replay.letter.id for replay in replays})
    for letter_id in missing:
        sys.stderr.write(f"no dead letter {letter_id}\n")
    if not replays and args.all:
        sys.stderr.write("no dead letters\n")
    return EXIT_FAILED if failed or missing else EXIT_OK
