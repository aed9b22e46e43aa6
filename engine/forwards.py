"""The SSH ports of Golem VMs (Forward rows): one per VM of an owner, from a port range, never handed out twice.

The table is the truth and outlives restarts: `sync` gives each VM of the owner that has none the lowest free port,
releases the ports of VMs that are gone, and answers the map the forwarder listens by (api/golem/forwarder.py).
A crash between a create and its port costs nothing: the next sync allocates it. A VM with no port free waits for
one (the cap on Golem VMs is checked against the range at start-up; VMs being deleted hold theirs until gone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from engine.db import Database
from engine.models import Forward, Instance, Lifecycle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForwardTarget:
    port: int
    instance_id: int
    address: str | None  # the guest's; None until it has one
    up: bool  # provisioned, not being deleted: the forward may carry traffic


class Forwards:
    def __init__(self, db: Database, owner: str, ports: range) -> None:
        self._db = db
        self._owner = owner
        self._ports = ports

    def sync(self) -> dict[int, ForwardTarget]:
        """Ports for the owner's VMs that need one, none for those gone; the map by port. Writes only on a change."""
        with self._db.session() as session:
            rows = self._rows(session)
        held = sum(port is not None for port, *_ in rows)
        waiting = any(port is None for port, *_ in rows) and held < len(self._ports)
        if waiting or any(lifecycle == Lifecycle.DELETED for *_, lifecycle in rows):
            with self._db.write() as session:
                self._allocate(session)
            with self._db.session() as session:
                rows = self._rows(session)
        return {
            port: ForwardTarget(port, vmid, address, lifecycle == Lifecycle.PROVISIONED)
            for port, vmid, address, lifecycle in rows
            if port is not None and lifecycle != Lifecycle.DELETED
        }

    def port_of(self, instance_id: int) -> int | None:
        with self._db.session() as session:
            return session.scalar(select(Forward.port).where(Forward.instance_id == instance_id))

    def _rows(self, session: Session) -> list[tuple[int | None, int, str | None, str]]:
        """(port or None, VMID, address, lifecycle) of the owner's VMs not deleted and of every forwarded VM."""
        query = (
            select(Forward.port, Instance.id, Instance.address, Instance.lifecycle)
            .select_from(Instance)
            .outerjoin(Forward, Forward.instance_id == Instance.id)
            .where(
                (Instance.owner == self._owner) & (Instance.lifecycle != Lifecycle.DELETED) | Forward.port.is_not(None)
            )
        )
        return [(port, vmid, address, lifecycle) for port, vmid, address, lifecycle in session.execute(query)]

    def _allocate(self, session: Session) -> None:
        gone = select(Instance.id).where((Instance.lifecycle == Lifecycle.DELETED) | (Instance.owner != self._owner))
        session.execute(delete(Forward).where(Forward.instance_id.in_(gone)))
        used = set(session.scalars(select(Forward.port)))
        query = (
            select(Instance.id)
            .outerjoin(Forward, Forward.instance_id == Instance.id)
            .where(Instance.owner == self._owner, Instance.lifecycle != Lifecycle.DELETED, Forward.port.is_(None))
            .order_by(Instance.id)
        )
        waiting = list(session.scalars(query))
        free = [port for port in self._ports if port not in used]
        if len(waiting) > len(free):  # they wait (reported creating) until a deleted VM's port is free
            log.warning("%d Golem VMs wait for an SSH port: all of %s are taken", len(waiting) - len(free), self._ports)
        for vmid, port in zip(waiting, free, strict=False):
            session.add(Forward(port=port, instance_id=vmid))
