"""This provider's advertisement in the discovery registry, kept current in the background.

The offer is recomputed from the cluster snapshot every few seconds (no Proxmox request: the snapshot is
refreshed anyway) and posted when it changes, or every `interval` to keep it alive (the registry forgets
advertisements after its TTL). With nothing to offer (every node over a threshold, or no fresh snapshot) the
advertisement is withdrawn, and it is withdrawn when the service stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from discovery.client import RegistryClient, RegistryRequestError
from engine.duties import DutyLease
from engine.free_capacity import Thresholds, largest_offer
from engine.placement import Reservation
from engine.proxmox import Snapshot
from engine.settings import Settings

log = logging.getLogger(__name__)

Advertisement = dict[str, Any]
_UNKNOWN: Any = object()  # what the registry holds before our first round


def advertisement(
    settings: Settings, snapshot: Snapshot | None, reservations: Iterable[Reservation] = ()
) -> Advertisement | None:
    """The body to post for a snapshot, or None when there is nothing to offer. reservations: accepted creates
    Proxmox does not show yet (their resources are committed all the same)."""
    if snapshot is None:
        return None
    offer = largest_offer(
        snapshot,
        settings.cpu_overcommit,
        settings.memory_overcommit,
        settings.select_coeff,
        Thresholds(
            settings.cpu_threshold_pct / 100, settings.memory_threshold_pct / 100, settings.storage_threshold_pct / 100
        ),
        settings.node_allowlist,
        settings.vm_storage,
        reservations,
    )
    if offer is None:
        return None
    return {
        # Golem requestors connect to the listener (and its SSH forwards) at the advertised address.
        "ip_address": settings.golem_listen_host if settings.golem_compat else settings.advertised_ip,
        "country": settings.provider_country,
        "provider_name": settings.provider_name,
        "platform": settings.provider_platform,
        "resources": {"cpu": offer.cpu, "memory": offer.memory_gb, "storage": offer.storage_gb},
        "pricing": {name: getattr(settings, f"price_{name}") for name in PRICES},
    }


# The monthly prices an advertisement carries, as Golem's discovery names them (settings: price_<name>).
PRICES = tuple(
    f"{currency}_per_{unit}_month" for currency in ("usd", "glm") for unit in ("core", "gb_ram", "gb_storage")
)


class Advertiser:
    def __init__(
        self,
        client: RegistryClient,
        compose: Callable[[], Advertisement | None],
        interval_s: float,
        check_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        duty: DutyLease | None = None,
    ) -> None:
        self._client = client
        self._duty = duty  # with several API processes, the one holding it advertises
        self._compose = compose
        self._interval = interval_s
        self._check_every = check_every_s
        self._clock = clock
        self._posted: Advertisement | None = _UNKNOWN
        self._posted_at = 0.0
        self._failing = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="advertiser", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self._posted not in (None, _UNKNOWN):
            self._send(None)
        if self._duty is not None:
            self._duty.release()
        self._client.close()

    def poke(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._wake.wait(self._check_every)
            self._wake.clear()

    def tick(self) -> None:
        """One round: post a changed or due offer, withdraw a vanished one (if this process holds the duty)."""
        if self._duty is not None and not self._duty.held():
            self._posted = _UNKNOWN  # another process advertises; post afresh if the duty comes back
            return
        wanted = self._compose()
        due = self._clock() - self._posted_at >= self._interval
        if wanted == self._posted and not (wanted is not None and due):
            return
        self._send(wanted)

    def _send(self, wanted: Advertisement | None) -> None:
        try:
            if wanted is None:
                self._client.withdraw()
            else:
                self._client.advertise(wanted)
        except (RegistryRequestError, httpx.HTTPError) as exc:
            if not self._failing:
                log.warning("the discovery registry refused or did not answer: %s", _describe(exc))
            self._failing = True
            return
        if self._failing or wanted != self._posted:
            log.info("advertisement %s", f"posted: {wanted['resources']}" if wanted else "withdrawn")
        self._failing = False
        self._posted, self._posted_at = wanted, self._clock()

    @property
    def posted(self) -> Advertisement | None:
        return None if self._posted is _UNKNOWN else self._posted


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, RegistryRequestError) else type(exc).__name__
