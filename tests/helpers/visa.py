"""VISA's side of the contract: every /api route it calls, and the 12 instance states its enum accepts."""

from __future__ import annotations

# Each route VISA calls (ids of an instance that does not exist), an unknown one and an optional one.
ROUTES = [
    ("GET", "/api/images"),
    ("GET", "/api/images/9000"),
    ("GET", "/api/flavours"),
    ("GET", "/api/flavours/small"),
    ("GET", "/api/security_groups"),
    ("GET", "/api/metrics"),
    ("GET", "/api/instances"),
    ("GET", "/api/instances/identifiers"),
    ("GET", "/api/instances/100000"),
    ("POST", "/api/instances"),
    ("POST", "/api/instances/100000/start"),
    ("POST", "/api/instances/100000/shutdown"),
    ("POST", "/api/instances/100000/reboot"),
    ("DELETE", "/api/instances/100000"),
    ("GET", "/api/instances/100000/security_groups"),
    ("POST", "/api/instances/100000/security_groups"),
    ("POST", "/api/instances/100000/security_groups/remove"),
    ("GET", "/api/no-such-route"),
    ("GET", "/api/devices"),
]
# VISA's InstanceState enum: strict and case-sensitive, one value outside it fails a whole instance list.
STATES = {
    "UNKNOWN",
    "BUILDING",
    "STARTING",
    "ACTIVE",
    "ACTIVE_MIGRATING",
    "STOPPING",
    "STOPPED",
    "REBOOTING",
    "MIGRATING",
    "UNAVAILABLE",
    "ERROR",
    "DELETED",
}
