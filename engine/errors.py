"""Domain errors with stable codes; the HTTP layers map them to status codes."""

from __future__ import annotations


class ProvisionerError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ProvisionerError):
    status = 404
    code = "not_found"


class UnknownImage(ProvisionerError):
    code = "unknown_image"


class UnknownFlavour(ProvisionerError):
    code = "unknown_flavour"


class UnknownSecurityGroup(ProvisionerError):
    code = "unknown_security_group"


class InvalidSSHKeyError(ProvisionerError):
    code = "invalid_ssh_key"


class InvalidName(ProvisionerError):
    code = "invalid_name"


class NoCapacityError(ProvisionerError):
    status = 409
    code = "no_capacity"


class QuotaExceeded(ProvisionerError):
    status = 409
    code = "quota_exceeded"


class QuotaLimit(ProvisionerError):
    """A token's own quota (engine/tokens.py): its code names the limit (quota_vms, quota_vcpus, …)."""

    status = 403

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.code = f"quota_{limit}"


class IdempotencyConflict(ProvisionerError):
    status = 409
    code = "idempotency_conflict"


class Conflict(ProvisionerError):
    status = 409
    code = "conflict"


class SiteKey(ProvisionerError):
    """A site key (configured for every VM, or the provisioner's own guest key) cannot leave one VM."""

    status = 409
    code = "site_key"


class GuestAccessDisabled(ProvisionerError):
    status = 409
    code = "guest_access_disabled"


class BackendUnavailable(ProvisionerError):
    status = 503
    code = "backend_unavailable"


class UnexpectedError(ProvisionerError):
    """A failure nobody foresaw, in one request: that request's 500, never its neighbours' (the log has why)."""

    status = 500
    code = "internal_error"


class StoreUnavailable(ProvisionerError):
    status = 503
    code = "store_unavailable"
