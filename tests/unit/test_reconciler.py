"""The reconciler: which VMs it adopts, and how it finishes deletes that failed."""

from __future__ import annotations

from datetime import timedelta

from engine.db import Database
from engine.jobs.kinds import owner_tag
from engine.models import Instance, Job, JobKind, JobState, Lifecycle, utcnow
from engine.proxmox import Snapshot, VmInfo
from engine.reconciler import Reconciler
from engine.seeds import SeedTokens
from engine.settings import Settings
from engine.store import Store
from tests.helpers.store import provisioned

GiB = 1024**3
PROVIDER = "ab" * 32


def vm(vmid: int, name: str = "vm", tags: tuple[str, ...] = ()) -> VmInfo:
    return VmInfo(vmid, name, "pve1", "running", False, 2, 2 * GiB, 10 * GiB, None, frozenset(tags))


class Cluster:
    def __init__(self, *vms: VmInfo) -> None:
        self.vms = {v.vmid: v for v in vms}

    def snapshot(self) -> Snapshot:
        return Snapshot(taken_at=0, vms=dict(self.vms))

    def guest_ipv4(self, _node: str, _vmid: int) -> str | None:
        return "198.18.0.5"


def reconciler(db: Database, cluster: Cluster, **settings: object) -> Reconciler:
    values: dict[str, object] = {"insecure_no_auth": True, "provider_id": PROVIDER} | settings
    return Reconciler(Store(db), SeedTokens(b"k" * 32), cluster, Settings(**values))  # type: ignore[arg-type]


def instances(db: Database) -> dict[int, str]:
    with db.session() as session:
        return {i.id: i.lifecycle for i in session.query(Instance)}


def test_only_vms_with_this_providers_tag_inside_its_range_are_adopted(db: Database):
    ours = owner_tag(Settings(insecure_no_auth=True, provider_id=PROVIDER))  # type: ignore[call-arg]
    assert ours == "provisioner-" + PROVIDER[:16]
    cluster = Cluster(
        vm(100001, tags=("provisioner", ours)),
        vm(100002, tags=("provisioner",)),  # the generic tag anyone can set
        vm(100003, tags=("provisioner", "provisioner-" + "cd" * 8)),  # another provider's
        vm(250000, tags=("provisioner", ours)),  # outside PROVISIONER_VMID_MIN..MAX
        vm(100004, name="VISA-INSTANCE-7"),  # the reference provider's, not asked for
    )
    reconciler(db, cluster).reconcile()
    assert instances(db) == {100001: Lifecycle.PROVISIONED}
    with db.session() as session:
        assert session.get_one(Instance, 100001).adopted


def test_reference_vms_are_adopted_by_name_only_when_asked(db: Database):
    cluster = Cluster(vm(120, name="VISA-INSTANCE-7"), vm(121, name="other"))
    reconciler(db, cluster, adopt_reference_vms=True).reconcile()
    assert instances(db) == {120: Lifecycle.PROVISIONED}


def failed_delete(db: Database, vmid: int, finished_ago_s: float) -> None:
    provisioned(db, vmid, Lifecycle.DELETING)
    with db.session() as session:
        session.add(
            Job(
                id=f"delete-{vmid}",
                kind=JobKind.DELETE,
                instance_id=vmid,
                state=JobState.FAILED,
                error="VM is locked",
                finished_at=utcnow() - timedelta(seconds=finished_ago_s),
            )
        )


def open_deletes(db: Database, vmid: int) -> list[Job]:
    with db.session() as session:
        query = session.query(Job).filter(Job.instance_id == vmid, Job.state == JobState.PENDING)
        return list(query)


def test_a_failed_delete_of_a_vm_still_there_is_tried_again_after_a_backoff(db: Database):
    failed_delete(db, 1, finished_ago_s=5)
    reconciler(db, Cluster(vm(1))).reconcile()
    [retry] = open_deletes(db, 1)
    assert retry.kind == JobKind.DELETE and retry.not_before is not None
    reconciler(db, Cluster(vm(1))).reconcile()
    assert len(open_deletes(db, 1)) == 1  # one retry at a time
    assert instances(db) == {1: Lifecycle.DELETING}


def test_a_deleting_instance_whose_vm_is_gone_is_deleted(db: Database):
    failed_delete(db, 1, finished_ago_s=5)
    reconciler(db, Cluster()).reconcile()
    assert instances(db) == {1: Lifecycle.DELETED}
    assert open_deletes(db, 1) == []
