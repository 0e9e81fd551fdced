"""What happens to a job that other parts of the service act on, as Celery signals.

The registry sends them; a capability connects a receiver where it is defined (the devices
release a device when its job ends: tasks.devices.reservations). A receiver's exception is
logged, never raised into the sender (celery.utils.dispatch.Signal.send).
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

#: A job reached a terminal status. Sent with `registry` (the sender) and `job_id`.
job_ended = Signal(name="qhybrid.job_ended")

__all__ = ["job_ended"]
