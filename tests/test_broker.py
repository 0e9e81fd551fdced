"""The kombu internals housekeeping reads (tasks.core.broker), against a real Redis transport.

If a kombu release renames the priority lists or the unacked hash, this fails first.
"""

from __future__ import annotations

import json
import uuid

from kombu import Connection

from tasks.core import broker
from tasks.core.redis_client import connect


def test_the_adapter_finds_waiting_and_unacknowledged_messages_where_kombu_keeps_them(
        redis_server: str) -> None:
    url = f"{redis_server}/11"
    r = connect(url)
    queue = "qh-broker-" + uuid.uuid4().hex[:8]
    marker = uuid.uuid4().hex
    with Connection(url, transport_options={"queue_order_strategy": "priority"}) as conn:
        q = conn.SimpleQueue(queue)
        try:
            # given one message of each priority step kombu keeps a list for
            for priority in (0, 3, 6, 9):
                q.put({"job": marker, "p": priority}, priority=priority)
            # then every one is counted, in the list of its step
            assert broker.queued_messages(r, queue) == 4
            assert [r.llen(name) for name in broker.priority_lists(queue)] == [1, 1, 1, 1]
            # when one is taken and not acknowledged, it is found among the unacked ones
            message = q.get(timeout=5)
            assert broker.queued_messages(r, queue) == 3
            assert marker in broker.unacked_bodies(r)
            assert json.loads(message.body)["job"] == marker
            # and once acknowledged it is gone from them
            message.ack()
            assert marker not in broker.unacked_bodies(r)
        finally:
            q.clear()
            q.close()
