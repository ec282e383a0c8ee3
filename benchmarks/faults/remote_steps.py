"""The code of the campaign's remote step: another code base, as far as the pipelines know.

:mod:`benchmarks.faults.pipelines` declares ``faults_shout`` with ``remote_step`` and never
imports this module; only the worker started with ``-A benchmarks.faults.remote_steps``
serves it.
"""

from __future__ import annotations

import asyncio

from aexec import step
from benchmarks.faults.ledger import note


@step(name="faults_shout", queue="faults-remote")
async def shout(x: int) -> int:
    note()
    await asyncio.sleep(0.01)
    return x * 3
