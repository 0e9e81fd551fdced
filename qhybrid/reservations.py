"""Device reservations from the client: reserve a device for a time window, list, cancel.

    r = create_reservation("generic_heavy_hex_27", start=time.time() + 60, end=time.time() + 3660)
    job = hybrid_job(device=r.device, reservation_arn=r.arn)(fn)()

Inside the window only the jobs and quantum tasks naming `r.arn` run on the device.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from qhybrid.client import Client


class Reservation:
    """A device reservation on the service."""

    def __init__(self, body: dict[str, Any], client: Client) -> None:
        self._client = client
        self._body = body
        self.reservation_id: str = body["reservation_id"]
        self.arn: str = body["arn"]
        self.device: str = body["device"]

    def __repr__(self) -> str:
        return f"<Reservation {self.device} {self._body['start']}..{self._body['end']}>"

    @property
    def raw(self) -> dict[str, Any]:
        return dict(self._body)

    def refresh(self) -> dict[str, Any]:
        self._body = self._client._json("GET", f"/reservations/{self.reservation_id}")
        return self._body

    def state(self) -> str:
        """SCHEDULED, ACTIVE, ENDED or CANCELED."""
        return str(self.refresh()["state"])

    def cancel(self) -> Reservation:
        self._body = self._client._json("POST", f"/reservations/{self.reservation_id}/cancel")
        return self


def _time(value: float | datetime | str) -> float | str:
    return value.timestamp() if isinstance(value, datetime) else value


def create_reservation(device: str, start: float | datetime | str, end: float | datetime | str,
                       *, user: str | None = None, client: Client | None = None) -> Reservation:
    """Reserve `device` from `start` to `end` (epoch seconds, datetimes or ISO 8601 text);
    an admin may reserve it for another `user`."""
    client = client or Client()
    body: dict[str, Any] = {"device": device, "start": _time(start), "end": _time(end)}
    if user:
        body["user"] = user
    return Reservation(client._json("POST", "/reservations", json=body), client)


def list_reservations(client: Client | None = None) -> list[Reservation]:
    """Your reservations (an admin's: everyone's), by start time."""
    client = client or Client()
    return [Reservation(b, client) for b in client._json("GET", "/reservations")["reservations"]]


def get_reservation(arn: str, client: Client | None = None) -> Reservation:
    client = client or Client()
    res_id = arn.rsplit("/", 1)[-1]
    return Reservation(client._json("GET", f"/reservations/{res_id}"), client)


__all__ = ["Reservation", "create_reservation", "get_reservation", "list_reservations"]
