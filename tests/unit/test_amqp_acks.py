"""Which deliveries one RabbitMQ ack with ``multiple`` may settle: the oldest unsettled run."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aexec.transport.amqp import _Unsettled

CHANNEL, RESTORED = object(), object()


def message(tag: int, channel: object = CHANNEL) -> Any:
    return SimpleNamespace(delivery_tag=tag, channel=channel)


def unsettled(*tags: int) -> _Unsettled:
    found = _Unsettled()
    for tag in tags:
        found.add(message(tag))
    return found


def test_an_ack_covers_the_oldest_unsettled_deliveries_that_are_all_wanted() -> None:
    found = unsettled(1, 2, 3, 4)
    assert found.cover([message(1), message(2), message(4)]) == 2
    assert found.cover([message(4)]) is None  # 3 is older and still unsettled
    assert found.cover([message(3), message(4)]) == 4


def test_no_ack_covers_an_older_delivery_that_is_not_wanted() -> None:
    assert unsettled(5, 6, 7).cover([message(6), message(7)]) is None


def test_settled_deliveries_leave_the_run_open() -> None:
    found = unsettled(1, 2, 3)
    found.discard(message(1))
    assert found.cover([message(2), message(3)]) == 3


def test_a_restored_channel_forgets_the_deliveries_of_the_closed_one() -> None:
    found = unsettled(1, 2, 3)
    found.add(message(1, RESTORED))
    assert found.cover([message(2), message(3)]) is None  # the broker's again
    assert found.cover([message(1, RESTORED)]) == 1
