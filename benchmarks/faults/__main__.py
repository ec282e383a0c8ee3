"""``python -m benchmarks.faults [--short|--long] [--seed N]``: the seeded fault campaign.

Starts a private RabbitMQ node and PostgreSQL cluster, three workers and two coordinator
services, submits a few hundred runs of mixed shapes while a seeded schedule injects
faults of every kind, then checks the invariants of aexec's delivery contract against the
store, a ledger of every execution of step code, the processes' exits and the dead-letter
queue.  Prints every violation on a line of its own, then one summary line; exits 1 on
any violation, 0 when there is none, 2 when the campaign itself could not run.  The seed
is always printed: ``--seed N`` replays the same schedule of runs and faults.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.faults.campaign import CampaignError, Options, run
from benchmarks.faults.postgres import ClusterUnavailable
from benchmarks.faults.rabbit import NodeUnavailable
from benchmarks.faults.schedule import KINDS, parse_kinds

MODES = {
    "short": {"duration": 120.0, "runs": 300, "faults": 100, "quiet": 60.0},
    "long": {"duration": 600.0, "runs": 1500, "faults": 550, "quiet": 120.0},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.faults",
        description="Seeded fault campaign: faults of every kind against real processes, "
        "then the invariants of aexec's delivery contract.",
        epilog="fault kinds: " + "; ".join(f"{k}: {v}" for k, v in KINDS.items()),
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--short", action="store_const", dest="mode", const="short",
        help="about 2 minutes of faults (the default; the test suite runs it)",
    )  # fmt: skip
    size.add_argument(
        "--long", action="store_const", dest="mode", const="long",
        help="10 minutes of faults, 550 of them: the soak",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, help="replay this schedule (default: a random seed)")
    parser.add_argument("--duration", type=float, metavar="S", help="seconds of faults")
    parser.add_argument("--runs", type=int, metavar="N", help="runs to submit")
    parser.add_argument("--faults", type=int, metavar="N", help="faults to inject")
    parser.add_argument(
        "--quiet", type=float, metavar="S",
        help="seconds every run may take to finish once the faults stop",
    )  # fmt: skip
    parser.add_argument(
        "--kinds", metavar="K,K", help="only these fault kinds; -kind leaves one out"
    )
    parser.add_argument(
        "--slack", type=float, default=1.0, metavar="S",
        help="clock slack when comparing a step's start with its run's end (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--lease", type=float, default=2.5, metavar="S", help="coordinator lease (default 2.5)"
    )
    parser.add_argument("--workdir", type=Path, help="work here instead of a temporary directory")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory: logs, ledger, report.json"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log progress")
    return parser


def options_from(args: argparse.Namespace) -> Options:
    mode = args.mode or "short"
    size = dict(MODES[mode])
    for name in ("duration", "runs", "faults", "quiet"):
        if getattr(args, name) is not None:
            size[name] = getattr(args, name)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    return Options(
        seed=seed,
        mode=mode,
        duration=float(size["duration"]),
        runs=int(size["runs"]),
        faults=int(size["faults"]),
        quiet=float(size["quiet"]),
        kinds=parse_kinds(args.kinds),
        slack=args.slack,
        lease=args.lease,
        workdir=args.workdir,
        keep=args.keep,
    )


def replay_command(argv: Sequence[str], seed: int) -> str:
    """The command line that replays this campaign: the same options, this seed."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--seed":
            skip = True
        elif not arg.startswith("--seed="):
            kept.append(arg)
    return " ".join(["python -m benchmarks.faults", *kept, "--seed", str(seed)])


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    # The client's reconnects during broker faults are expected: not news.
    quiet = logging.CRITICAL if verbosity < 2 else logging.NOTSET
    for name in ("aiormq", "aio_pika", "aexec"):
        logging.getLogger(name).setLevel(quiet)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        options = options_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging(args.verbose)
    replay = replay_command(argv, options.seed)
    sys.stderr.write(
        f"fault campaign, seed {options.seed} ({options.mode}): {options.duration:g} s of "
        f"faults ({options.faults} planned), {options.runs} runs; replay: {replay}\n"
    )
    try:
        outcome = asyncio.run(run(options))
    except (CampaignError, NodeUnavailable, ClusterUnavailable) as exc:
        sys.stderr.write(f"fault campaign could not run: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted; replay: {replay}\n")
        return 130
    for note in outcome.notes:
        sys.stderr.write(f"note: {note}\n")
    sys.stdout.write("\n".join(outcome.lines()) + "\n")
    sys.stdout.flush()
    if not outcome.ok:
        sys.stderr.write(f"replay: {replay}\n")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
