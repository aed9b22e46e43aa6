"""The create intake on a real store: groups of concurrent creates, committed before anyone is answered."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, select

from engine.capacity import Capacity
from engine.db import Database
from engine.errors import (
    BackendUnavailable,
    InvalidSSHKeyError,
    NoCapacityError,
    ProvisionerError,
    QuotaExceeded,
    StoreUnavailable,
    UnknownFlavour,
    UnknownImage,
    UnknownSecurityGroup,
)
from engine.intake import Created, CreateIntake, CreateRequest
from engine.models import Flavour, Instance, Job, JobKind, JobState, Lifecycle
from engine.placement import Request
from engine.proxmox import NodeInfo, ProxmoxUnavailable, Snapshot, StorageInfo, VmInfo
from engine.seeds import SeedTokens
from engine.settings import Settings
from engine.store import Store
from engine.vmids import VmidAllocator
from tests.conftest import SITE_KEY, USER_KEY
from tests.helpers.store import add_instance

GiB = 1024**3
TEMPLATE = 9000


def cluster_snapshot(node_cpus: int = 64) -> Snapshot:
    """Two nodes; template 9000 on pve1 with its disk on local storage, so its clones stay on pve1."""
    nodes = {name: NodeInfo(name, True, node_cpus, 512 * GiB) for name in ("pve1", "pve2")}
    template = VmInfo(TEMPLATE, "debian", "pve1", "stopped", True, 2, 2 * GiB, 10 * GiB, None, frozenset())
    storages = [StorageInfo("local-lvm", n, False, frozenset({"images"}), 100 * GiB, 0) for n in nodes]
    return Snapshot(taken_at=0, nodes=nodes, vms={TEMPLATE: template}, storages=storages)


class FakeCluster:
    """The cluster view the intake reads: a snapshot, firewall groups and template storages."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.current = snapshot
        self.fresh_reads = 0

    def snapshot(self) -> Snapshot | None:
        return self.current

    def fresh_snapshot(self) -> Snapshot:
        self.fresh_reads += 1
        if self.current is None:
            raise ProxmoxUnavailable("ConnectTimeout")
        return self.current

    def firewall_groups(self) -> list[str]:
        return ["default", "web"]

    def template_storages(self, _node: str, _vmid: int) -> frozenset[str]:
        return frozenset({"local-lvm"})


def create(n: int, **changes: Any) -> CreateRequest:
    values: dict[str, Any] = {
        "name": f"VISA-INSTANCE-{n}",
        "image_id": str(TEMPLATE),
        "flavour_id": "small",
        "security_groups": ["default"],
        "metadata": {"id": str(n), "instruments": ""},
        "boot_command": None,
    }
    return CreateRequest(**(values | changes))


@pytest.fixture
def store(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.migrate()
    with db.session() as session:
        session.add(Flavour(id="small", name="Small", cpus=2, ram_mb=4096, disk_gb=20))
    yield db
    db.dispose()


class Intake:
    """A started CreateIntake and what it told the job queue."""

    def __init__(self, db: Database, cluster: FakeCluster, **settings: Any) -> None:
        self.notified = 0
        self.intake = CreateIntake(
            Settings(insecure_no_auth=True, cpu_overcommit=1.0, **settings),  # type: ignore[call-arg]
            Store(db),
            SeedTokens(b"k" * 32),
            cluster,  # type: ignore[arg-type]
            [SITE_KEY],
            on_committed=self._notified,
        )

    def _notified(self) -> None:
        self.notified += 1

    def create_all(self, requests: list[CreateRequest]) -> list[int | ProvisionerError]:
        """Send every request at once, as concurrent HTTP requests do; each one's VMID or error."""

        async def send() -> list[Any]:
            return list(await asyncio.gather(*(self.intake.create(r) for r in requests), return_exceptions=True))

        return [vmid_or_error(outcome) for outcome in asyncio.run(send())]

    def store_group(self, requests: list[CreateRequest]) -> list[int | ProvisionerError]:
        """One group stored at once, as the writer thread stores it; each one's VMID or error."""
        return [vmid_or_error(outcome) for outcome in self.intake.store_group(requests)]


def vmid_or_error(outcome: Any) -> Any:
    return outcome.vmid if isinstance(outcome, Created) else outcome


@pytest.fixture
def make_intake(store: Database) -> Iterator[Callable[..., Intake]]:
    started: list[Intake] = []

    def make(cluster: FakeCluster | None = None, **settings: Any) -> Intake:
        intake = Intake(store, cluster or FakeCluster(cluster_snapshot()), **settings)
        intake.intake.start()
        started.append(intake)
        return intake

    yield make
    for intake in started:
        intake.intake.stop()


@contextmanager
def listening(store: Database, name: str, listener: Callable[..., Any]) -> Iterator[None]:
    event.listen(store.engine, name, listener)
    try:
        yield
    finally:
        event.remove(store.engine, name, listener)


def rows(store: Database) -> tuple[list[Instance], list[Job]]:
    with store.session() as session:
        return list(session.scalars(select(Instance))), list(session.scalars(select(Job)))


def test_concurrent_creates_are_stored_with_their_jobs_on_distinct_vmids(
    store: Database, make_intake: Callable[..., Intake]
):
    intake = make_intake()
    commits: list[object] = []
    with listening(store, "commit", commits.append):
        outcomes = intake.create_all([create(n) for n in range(30)])
    assert all(isinstance(o, int) for o in outcomes), outcomes
    assert len(set(outcomes)) == 30
    instances, jobs = rows(store)
    by_id = {i.id: i for i in instances}
    assert sorted(by_id) == sorted(outcomes)  # type: ignore[type-var]
    for n, vmid in enumerate(outcomes):
        instance = by_id[vmid]  # type: ignore[index]
        assert (instance.name, instance.meta["id"]) == (f"VISA-INSTANCE-{n}", str(n)), "no request got another's data"
        assert instance.lifecycle == Lifecycle.BUILDING and instance.node == "pve1"
        assert instance.ssh_keys == [SITE_KEY] and instance.security_groups == ["default"]
        assert instance.disk_gb == 20 and instance.seed_token is None  # only its digest is stored
        assert instance.seed_nonce and instance.seed_token_hash
    assert len({i.seed_token_hash for i in instances}) == 30
    assert sorted(j.instance_id for j in jobs) == sorted(by_id)
    assert {(j.kind, j.state) for j in jobs} == {(JobKind.CREATE, JobState.PENDING)}
    assert jobs[0].params == {"template": TEMPLATE, "template_node": "pve1", "full_clone": True}
    assert intake.notified == len(commits) >= 1, "the job queue is told once per stored group"


def test_no_create_is_answered_before_its_group_is_committed(store: Database, make_intake: Callable[..., Intake]):
    intake = make_intake()
    release = threading.Event()
    loop: asyncio.AbstractEventLoop | None = None
    committing: asyncio.Future[None] | None = None

    def hold(_connection: object) -> None:
        # Queued on the loop by the commit itself: an answer given before the commit reaches the loop, and finishes
        # its task, ahead of this.
        assert loop is not None and committing is not None
        loop.call_soon_threadsafe(lambda: committing.done() or committing.set_result(None))
        assert release.wait(10)

    def stored() -> int:
        with store.engine.connect() as connection:  # a reader that commits nothing, so `hold` leaves it alone
            return connection.scalar(select(func.count(Instance.id))) or 0

    async def scenario() -> list[int]:
        nonlocal loop, committing
        loop = asyncio.get_running_loop()
        committing = loop.create_future()
        pending = [asyncio.create_task(intake.intake.create(create(n))) for n in range(10)]
        await asyncio.wait_for(committing, 10)
        assert not any(task.done() for task in pending), "a create was answered before its commit"
        assert await asyncio.to_thread(stored) == 0
        release.set()
        return [created.vmid for created in await asyncio.gather(*pending)]

    with listening(store, "commit", hold):
        vmids = asyncio.run(scenario())
    assert stored() == len(set(vmids)) == 10


def disk_error(store: Database) -> Exception:
    """The database driver's own error (sqlite3's, psycopg's), as a failing disk makes it."""
    return store.engine.dialect.loaded_dbapi.OperationalError("disk I/O error")  # type: ignore[no-any-return]


@contextmanager
def jobs_insert_fails(store: Database) -> Iterator[None]:
    def fail(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.startswith("INSERT INTO jobs"):  # after the instances' INSERT
            raise disk_error(store)

    with listening(store, "before_cursor_execute", fail):
        yield


@contextmanager
def commit_fails(store: Database) -> Iterator[None]:
    def fail(_dbapi_connection: object) -> None:
        raise disk_error(store)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(store.engine.dialect, "do_commit", fail)
        yield


@pytest.mark.parametrize("failure", [jobs_insert_fails, commit_fails])
def test_a_failing_store_refuses_every_create_of_the_group_and_keeps_none(
    store: Database,
    make_intake: Callable[..., Intake],
    failure: Callable[[Database], Any],
    caplog: pytest.LogCaptureFixture,
):
    intake = make_intake()
    with failure(store):
        outcomes = intake.store_group([create(n) for n in range(5)])
    assert "OperationalError: disk I/O error" in caplog.text
    assert "[parameters" not in caplog.text and "VISA-INSTANCE" not in caplog.text, "no row (seed token) is logged"
    assert all(isinstance(o, StoreUnavailable) and o.status == 503 for o in outcomes), outcomes
    assert {o.code for o in outcomes} == {"store_unavailable"}  # type: ignore[union-attr]
    assert rows(store) == ([], []), "nothing of the group was kept"
    assert intake.notified == 0
    assert all(isinstance(o, int) for o in intake.create_all([create(9)])), "the writer goes on after a failure"


def test_refused_creates_leave_the_rest_of_their_group_alone(store: Database, make_intake: Callable[..., Intake]):
    intake = make_intake()
    outcomes = intake.store_group(
        [
            create(0),
            create(1, flavour_id="huge"),
            create(2, image_id="4242"),
            create(3, security_groups=["default", "nope"]),
            create(4, metadata={"sshPublicKey": "ssh-rsa AAAA-garbage"}),
            create(5, metadata={"sshPublicKey": USER_KEY}),
        ]
    )
    refused = [type(o) for o in outcomes[1:5]]
    assert refused == [UnknownFlavour, UnknownImage, UnknownSecurityGroup, InvalidSSHKeyError]
    assert all(isinstance(o, ProvisionerError) and o.status == 400 for o in outcomes[1:5])
    instances, jobs = rows(store)
    assert sorted(i.id for i in instances) == sorted([outcomes[0], outcomes[5]])  # type: ignore[type-var]
    assert len(jobs) == 2
    assert next(i for i in instances if i.id == outcomes[5]).ssh_keys == [SITE_KEY, USER_KEY]


def test_a_group_counts_its_own_creates_and_the_stored_ones_for_room_on_the_node(make_intake: Callable[..., Intake]):
    intake = make_intake(FakeCluster(cluster_snapshot(node_cpus=6)))  # room for three 2-vCPU clones on pve1
    outcomes = intake.store_group([create(n) for n in range(4)])
    assert [type(o) for o in outcomes] == [int, int, int, NoCapacityError]
    assert outcomes[3].code == "no_capacity"  # type: ignore[union-attr]
    assert isinstance(intake.store_group([create(5)])[0], NoCapacityError), "stored builds keep their room"


def test_the_quota_counts_the_creates_of_the_group(store: Database, make_intake: Callable[..., Intake]):
    intake = make_intake(max_instances=3)
    outcomes = intake.create_all([create(n) for n in range(5)])
    assert sum(isinstance(o, int) for o in outcomes) == 3
    assert sum(isinstance(o, QuotaExceeded) for o in outcomes) == 2
    assert len(rows(store)[0]) == 3


def test_an_unreachable_proxmox_is_asked_once_per_group(store: Database, make_intake: Callable[..., Intake]):
    cluster = FakeCluster(None)
    intake = make_intake(cluster)
    outcomes = intake.store_group([create(n) for n in range(5)] + [create(5, flavour_id="huge")])
    assert [type(o) for o in outcomes] == [BackendUnavailable] * 5 + [UnknownFlavour]
    assert cluster.fresh_reads == 1
    assert rows(store) == ([], [])


def test_vmids_continue_after_the_last_handed_out_skip_ids_in_use_and_wrap_around(store: Database):
    add_instance(store, 103)
    add_instance(store, 101)
    allocator = VmidAllocator(100, 109)
    with store.session() as session:
        first = allocator.free_ids(session, in_proxmox={105})
        assert [next(first), next(first)] == [104, 106]  # after the highest stored; 105 is in Proxmox
    with store.session() as session:
        assert list(allocator.free_ids(session, in_proxmox={105})) == [107, 108, 109, 100, 102, 104, 106]


def test_a_full_vmid_range_is_no_capacity(store: Database):
    add_instance(store, 100)
    add_instance(store, 101)
    with store.session() as session:
        settings = Settings(insecure_no_auth=True, vmid_min=100, vmid_max=102)  # type: ignore[call-arg]
        capacity = Capacity(session, cluster_snapshot(), settings, VmidAllocator(100, 102))
        assert capacity.reserve(Request(1, 512, None)).vmid == 102
        with pytest.raises(NoCapacityError, match="no free VMID"):
            capacity.reserve(Request(1, 512, None))
