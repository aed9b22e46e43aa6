"""The per-instance NoCloud seed, as guests fetch it: <seed base>/<token>/{meta-data,user-data,vendor-data}.

The token is the only credential a guest has; it is unguessable (256 bits), unique per instance, and
released when the instance is deleted. A wrong token answers 404 like a missing seed, so probing tells
nothing. The seed stays available for the VM's whole life: cloud-init re-reads it at every boot.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import PlainTextResponse

from engine import cloudinit
from engine.errors import NotFound
from engine.service import Provisioner

TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,128}$")


async def provisioner(request: Request) -> Provisioner:
    return request.app.state.provisioner  # type: ignore[no-any-return]


ProvisionerDep = Annotated[Provisioner, Depends(provisioner)]


def build_router(prefix: str) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["seed"])

    def document(token: str, service: Provisioner, render) -> PlainTextResponse:  # type: ignore[no-untyped-def]
        instance = service.seed_instance(token)
        return PlainTextResponse(render(service.seed_context(instance, token)), media_type="text/plain; charset=utf-8")

    @router.get("/{token}/meta-data", response_class=PlainTextResponse)
    def meta_data(token: str, service: ProvisionerDep) -> PlainTextResponse:
        """instance-id, local-hostname and the client's metadata under `meta`."""
        return document(_checked(token), service, cloudinit.meta_data)

    @router.get("/{token}/user-data", response_class=PlainTextResponse)
    def user_data(token: str, service: ProvisionerDep) -> PlainTextResponse:
        """The boot command verbatim, or an empty #cloud-config."""
        return document(_checked(token), service, cloudinit.user_data)

    @router.get("/{token}/vendor-data", response_class=PlainTextResponse)
    def vendor_data(token: str, service: ProvisionerDep) -> PlainTextResponse:
        """The user, its SSH keys and phone_home."""
        return document(_checked(token), service, cloudinit.vendor_data)

    @router.get("/{token}/network-config", response_class=PlainTextResponse)
    def network_config(token: str, service: ProvisionerDep) -> PlainTextResponse:
        """DHCPv4 on every ethernet NIC."""
        service.seed_instance(_checked(token))
        return PlainTextResponse(cloudinit.network_config())

    @router.post("/{token}/phone-home")
    def phone_home(
        token: str, service: ProvisionerDep, pub_key_ed25519: Annotated[str | None, Form(max_length=2000)] = None
    ) -> dict[str, str]:
        """cloud-init's phone_home: the guest applied our data and finished booting."""
        service.record_phone_home(_checked(token), pub_key_ed25519)
        return {"status": "recorded"}

    return router


def _checked(token: str) -> str:
    if not TOKEN.match(token):
        raise NotFound("no such seed")
    return token
