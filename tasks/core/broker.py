"""What housekeeping reads of Celery's Redis transport (kombu), in this one place.

kombu keeps a queue's messages of priority step p in the Redis list `<queue><sep><p>` (the
bare queue name for step 0), and every delivered but unacknowledged message in the hash
`unacked`, with its message body. Neither is kombu's public API: they are read here from the
transport's own class attributes, and tests/test_broker.py sends and takes real messages to
fail the moment a kombu release changes them.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from kombu.transport import redis as kombu_redis

_Channel = kombu_redis.Channel


def priority_lists(queue: str) -> list[str]:
    """The Redis lists that hold `queue`'s waiting messages, one per priority step."""
    return [f"{queue}{_Channel.sep}{p}" if p else queue for p in _Channel.priority_steps]


def queued_messages(r: Any, queue: str) -> int:
    """Messages waiting in a queue, over every priority list the transport keeps."""
    return sum(r.llen(name) for name in priority_lists(queue))


def unacked_bodies(r: Any) -> str:
    """Every delivered, unacknowledged message (headers and decoded body) as one text, to
    search for a job's id."""
    out = []
    for raw in r.hvals(_Channel.unacked_key):
        try:
            message = json.loads(raw)[0]
            body = message.get("body") or ""
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body).decode("utf-8", errors="replace")
            out.append(json.dumps(message.get("headers") or {}) + str(body))
        except (ValueError, TypeError, IndexError, AttributeError, binascii.Error):
            out.append(str(raw))      # not what kombu writes today: searched as it is
    return "\n".join(out)


__all__ = ["priority_lists", "queued_messages", "unacked_bodies"]
