"""Free capacity for advertisements (committed resources, the Golem thresholds) and the background advertiser."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from discovery.client import RegistryRequestError
from engine.advertiser import Advertiser, advertisement
from engine.free_capacity import Thresholds, largest_offer
from engine.placement import GiB, NoCapacity, Request, Reservation, choose_node, node_loads
from engine.proxmox import Snapshot
from engine.settings import Settings
from tests.conftest import FakeClock

COEFF = 4 * GiB


def node(name: str, cpus: int, mem_gib: int) -> dict[str, Any]:
    return {"type": "node", "node": name, "status": "online", "maxcpu": cpus, "maxmem": mem_gib * GiB}


def vm(vmid: int, on: str, cores: int, mem_gib: int, template: int = 0) -> dict[str, Any]:
    return {"type": "qemu", "vmid": vmid, "node": on, "maxcpu": cores, "maxmem": mem_gib * GiB, "template": template}


def storage(name: str, on: str, total_gib: int, used_gib: int, content: str = "images,rootdir") -> dict[str, Any]:
    return {
        "type": "storage",
        "storage": name,
        "node": on,
        "maxdisk": total_gib * GiB,
        "disk": used_gib * GiB,
        "content": content,
        "shared": 0,
    }


def cluster(*extra: dict[str, Any]) -> Snapshot:
    base = [
        node("n1", 8, 32),
        node("n2", 16, 64),
        storage("local-lvm", "n1", 500, 100),
        storage("local-lvm", "n2", 1000, 200),
        storage("local", "n2", 5000, 0, content="iso,backup"),
    ]
    return Snapshot.parse([*base, *extra], taken_at=0.0)


def offer(snapshot: Snapshot, thresholds: Thresholds = Thresholds(), **kwargs: Any) -> Any:
    return largest_offer(snapshot, 1.0, 1.0, COEFF, thresholds, **kwargs)


def test_the_offer_is_the_largest_vm_placement_accepts_on_the_node_it_would_choose():
    snapshot = cluster(vm(101, "n2", 4, 16), vm(9000, "n1", 8, 32, template=1))
    best = offer(snapshot)
    assert (best.node, best.cpu, best.memory_gb, best.storage_gb) == ("n2", 12, 48, 800)
    loads = node_loads(snapshot, [], 1.0, 1.0)
    assert choose_node(loads, Request(best.cpu, best.memory_gb * 1024, None), COEFF) == "n2"
    with pytest.raises(NoCapacity):
        choose_node(loads, Request(best.cpu + 1, best.memory_gb * 1024, None), COEFF)


def test_reservations_overcommit_and_the_node_allowlist_count_as_placement_counts_them():
    snapshot = cluster()
    assert offer(snapshot, reservations=[Reservation(102, "n2", 10, 40 * 1024)]).node == "n1"
    assert offer(snapshot, allowlist=frozenset({"n1"})).cpu == 8
    assert largest_offer(snapshot, 4.0, 1.0, COEFF, Thresholds()).cpu == 64


@pytest.mark.parametrize(
    ("guest", "why"),
    [(vm(101, "n2", 15, 1), "committed vCPUs over 90 %"), (vm(101, "n2", 1, 55), "committed memory over 85 %")],
)
def test_a_node_over_a_threshold_offers_nothing(guest: dict[str, Any], why: str):
    best = offer(cluster(guest))
    assert best.node == "n1", why


def test_storage_over_its_threshold_or_without_images_is_not_offered():
    snapshot = Snapshot.parse(
        [node("n1", 8, 32), storage("local-lvm", "n1", 100, 91), storage("local", "n1", 900, 0, content="iso")], 0.0
    )
    assert offer(snapshot) is None
    roomy = Snapshot.parse([node("n1", 8, 32), storage("a", "n1", 100, 89), storage("b", "n1", 50, 0)], 0.0)
    assert offer(roomy).storage_gb == 50
    assert offer(roomy, storage="a").storage_gb == 11


def test_a_full_cluster_offers_nothing():
    assert offer(cluster(vm(101, "n1", 8, 30), vm(102, "n2", 16, 60))) is None


def test_the_advertisement_body_uses_the_providers_settings():
    settings = Settings(insecure_no_auth=True, provider_country="fr", provider_ip="192.0.2.7", cpu_overcommit=1.0)
    body = advertisement(settings, cluster())
    zero = dict.fromkeys([f"{c}_per_{u}_month" for c in ("usd", "glm") for u in ("core", "gb_ram", "gb_storage")], 0.0)
    assert body == {
        "ip_address": "192.0.2.7",
        "country": "FR",
        "provider_name": "proxmox-provisioner",
        "platform": "x86_64",
        "resources": {"cpu": 16, "memory": 64, "storage": 800},
        "pricing": zero,
    }
    priced = settings.model_copy(
        update={"price_usd_per_core_month": 5.5, "golem_compat": True, "golem_host": "198.51.100.4"}
    )
    body = advertisement(priced, cluster())
    assert body is not None and body["pricing"] == zero | {"usd_per_core_month": 5.5}
    assert body["ip_address"] == "198.51.100.4", "the Golem listener's address, where requestors connect"
    assert advertisement(settings, None) is None
    assert (
        advertisement(
            Settings(insecure_no_auth=True, cpu_threshold_pct=1), cluster(vm(1, "n1", 1, 1), vm(2, "n2", 1, 1))
        )
        is None
    )


def test_accepted_creates_proxmox_does_not_show_yet_shrink_the_advertisement():
    settings = Settings(insecure_no_auth=True, cpu_overcommit=1.0)
    building = [Reservation(200 + n, node, 8, 16 * 1024) for n, node in enumerate(["n1", "n2"])]
    assert advertisement(settings, cluster())["resources"]["cpu"] == 16
    assert advertisement(settings, cluster(), building)["resources"]["cpu"] == 8


class FakeRegistry:
    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.down = False

    def advertise(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.down:
            raise httpx.ConnectError("refused")
        self.calls.append(("post", body["resources"]["cpu"]))
        return body

    def withdraw(self) -> bool:
        if self.down:
            raise RegistryRequestError(503, "HTTP_ERROR", "unavailable")
        self.calls.append(("delete", None))
        return True

    def close(self) -> None:
        self.calls.append(("close", None))


def test_the_advertiser_posts_on_change_refreshes_when_due_and_withdraws(caplog: pytest.LogCaptureFixture):
    clock, registry = FakeClock(0), FakeRegistry()
    offered: dict[str, Any] = {"value": {"resources": {"cpu": 4}}}
    advertiser = Advertiser(registry, lambda: offered["value"], interval_s=240, clock=clock)  # type: ignore[arg-type]
    advertiser.tick()
    clock.advance(100)
    advertiser.tick()
    assert registry.calls == [("post", 4)]
    offered["value"] = {"resources": {"cpu": 2}}
    advertiser.tick()
    clock.advance(240)
    advertiser.tick()
    assert registry.calls == [("post", 4), ("post", 2), ("post", 2)]
    offered["value"] = None
    advertiser.tick()
    advertiser.tick()
    assert registry.calls[3:] == [("delete", None)]

    registry.down = True
    offered["value"] = {"resources": {"cpu": 8}}
    with caplog.at_level(logging.WARNING, logger="engine.advertiser"):
        advertiser.tick()
        advertiser.tick()
    assert caplog.text.count("did not answer") == 1 and advertiser.posted is None
    registry.down = False
    advertiser.tick()
    assert advertiser.posted == {"resources": {"cpu": 8}}
    advertiser.stop()
    assert registry.calls[-2:] == [("delete", None), ("close", None)]


def test_the_first_round_withdraws_a_stale_advertisement_when_there_is_nothing_to_offer():
    registry = FakeRegistry()
    advertiser = Advertiser(registry, lambda: None, interval_s=240, clock=FakeClock(0))  # type: ignore[arg-type]
    advertiser.tick()
    advertiser.tick()
    assert registry.calls == [("delete", None)]
