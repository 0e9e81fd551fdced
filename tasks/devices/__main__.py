"""`python -m tasks.devices`: a device worker (see tasks.devices.worker)."""

from tasks.devices.worker import cli

cli()
