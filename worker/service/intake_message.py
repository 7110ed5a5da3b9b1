"""A request message as intake hands it over, with what its tenant was charged for it."""

from __future__ import annotations

from dataclasses import dataclass

from worker.service.replies import HeldMessage


@dataclass(frozen=True)
class Charge:
    """What a request cost its tenant's share when a worker took it (``fair_share.py``)."""

    counters: str  # the class's virtual counters hash
    tenant: str
    weight: float
    cost: float  # tokens charged: the gateway's estimate of prompt and max_tokens

    def settlement(self, num_tokens: int) -> float:
        """What to add to the tenant's counter once the request took ``num_tokens`` in all."""
        return (num_tokens - self.cost) / self.weight


@dataclass(frozen=True)
class IntakeMessage:
    message: HeldMessage
    data: str | None  # the GenerateRequest JSON; None if the entry has no data field
    is_reclaimed: bool = False
    num_deliveries: int = 1  # times the group handed it to a worker, this one included
    cost: float | None = None  # an internal request's expected tokens (the entry's cost field)
    charge: Charge | None = None  # set for requests of tenant streams
