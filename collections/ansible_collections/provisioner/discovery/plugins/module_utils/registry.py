# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Requests to the discovery registry, signed with the provider's ed25519 key (modules, inventory plugin).

The signed string is METHOD, PATH (no query), X-Timestamp, X-Nonce and hex(sha256(raw body)), joined by
newlines; the provider id is the lowercase hex of the raw public key. The private key is read from its
file here and never leaves this process: module arguments and results carry only the file's path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import traceback
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode

from ansible.module_utils.basic import env_fallback
from ansible.module_utils.urls import open_url

CRYPTOGRAPHY_IMPORT_ERROR = None
try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key
except ImportError:
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()


class RegistryError(Exception):
    def __init__(self, message, status=None, code=None, retry_after=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


MAX_BACKOFF_S = 30


def connection_argument_spec():
    """The options every module talking to the registry has (doc fragment provisioner.discovery.connection)."""
    return dict(
        url=dict(type="str", required=True, fallback=(env_fallback, ["DISCOVERY_URL"])),
        provider_key_file=dict(
            type="path", required=True, no_log=False, fallback=(env_fallback, ["DISCOVERY_PROVIDER_KEY_FILE"])
        ),
        timeout=dict(type="int", default=10),
        rate_limit_wait=dict(type="int", default=120),
        retries=dict(type="int", default=3),
        validate_certs=dict(type="bool", default=True),
        ca_path=dict(type="path"),
    )


def canonical_message(method, path, timestamp, nonce, body):
    return "\n".join((method, path, timestamp, nonce, hashlib.sha256(body).hexdigest())).encode("utf-8")


def load_private_key(path):
    if CRYPTOGRAPHY_IMPORT_ERROR is not None:
        raise RegistryError("the Python library cryptography is required to sign registry requests")
    try:
        with open(path, "rb") as handle:
            key = load_pem_private_key(handle.read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise RegistryError(f"cannot read the provider key {path}: {type(exc).__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RegistryError(f"the provider key {path} is not an ed25519 key")
    return key


def provider_id(key):
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def signed_headers(key, method, path, body, timestamp=None, nonce=None):
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_urlsafe(24)
    signature = key.sign(canonical_message(method, path, timestamp, nonce, body))
    return {
        "X-Provider-ID": provider_id(key),
        "X-Timestamp": timestamp,
        "X-Nonce": nonce,
        "X-Provider-Signature": base64.b64encode(signature).decode("ascii"),
    }


class Registry:
    """JSON requests to one registry: signed with `key`, or carrying the `read_token` bearer token."""

    def __init__(
        self,
        url,
        key=None,
        read_token=None,
        timeout=10,
        validate_certs=True,
        ca_path=None,
        rate_limit_wait=0,
        retries=0,
    ):
        self.base = url.rstrip("/")
        self.rate_limit_wait = rate_limit_wait
        self.retries = retries
        self.key = key
        self.read_token = read_token
        self.timeout = timeout
        self.validate_certs = validate_certs
        self.ca_path = ca_path

    @classmethod
    def from_params(cls, params):
        """The signing registry client for connection_argument_spec() options; RegistryError on a bad key file."""
        return cls(
            params["url"],
            load_private_key(params["provider_key_file"]),
            None,
            params["timeout"],
            params["validate_certs"],
            params["ca_path"],
            params["rate_limit_wait"],
            params.get("retries", 0),
        )

    @property
    def provider_id(self):
        return provider_id(self.key)

    def request(self, method, path, query=None, payload=None, missing_ok=False):
        """The decoded JSON answer; None for a 404 when missing_ok; RegistryError otherwise."""
        return self.exchange(method, path, query, payload, missing_ok)[0]

    def exchange(self, method, path, query=None, payload=None, missing_ok=False):
        """(decoded JSON answer, response headers). A 429 is sent again after its Retry-After for up to
        rate_limit_wait seconds in all; no answer or a 5xx, up to `retries` times with a doubling backoff. Each
        try is signed afresh (a new nonce): the registry's writes are upserts, so a write that did land before
        its answer was lost is harmless to send again."""
        deadline = time.monotonic() + self.rate_limit_wait
        failures = 0
        while True:
            try:
                return self._exchange_once(method, path, query, payload, missing_ok)
            except RegistryError as exc:
                if exc.status is None or exc.status >= 500:
                    failures += 1
                    if failures > self.retries:
                        raise
                    time.sleep(min(MAX_BACKOFF_S, 2 ** (failures - 1)))
                    continue
                wait = exc.retry_after
                if exc.status != 429 or wait is None or time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)

    def _exchange_once(self, method, path, query, payload, missing_ok):
        body = b"" if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self.key is not None:
            headers.update(signed_headers(self.key, method, path, body))
        elif self.read_token:
            headers["Authorization"] = f"Bearer {self.read_token}"
        url = self.base + path + ("?" + urlencode(query) if query else "")
        try:
            response = open_url(
                url,
                data=body or None,
                headers=headers,
                method=method,
                timeout=self.timeout,
                validate_certs=self.validate_certs,
                ca_path=self.ca_path,
                use_netrc=False,
            )
            return json.loads(response.read() or b"null"), response.headers
        except HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None, exc.headers
            raise _answer_error(exc) from None
        except (URLError, OSError, ValueError) as exc:
            raise RegistryError(f"the discovery registry at {self.base} did not answer: {exc}") from None


def _answer_error(exc):
    try:
        answer = json.loads(exc.read())
        code, message = answer["code"], answer["message"]
    except (ValueError, KeyError, TypeError):
        code, message = f"HTTP_{exc.code}", exc.reason
    error = RegistryError(f"the discovery registry refused: {exc.code} {code}: {message}", exc.code, code)
    try:
        error.retry_after = max(0, int(exc.headers.get("Retry-After")))
    except (TypeError, ValueError):
        error.retry_after = None
    return error


def converged(task, converge, result_key, comparable):
    """Run converge(task, registry) -> (changed, after, before) for a module or an action plugin (`task` has
    params, check_mode and _diff); returns the task's result, RegistryError when the registry refuses."""
    registry = Registry.from_params(task.params)
    changed, after, before = converge(task, registry)
    return {
        "changed": changed,
        "provider_id": registry.provider_id,
        "diff": {"before": comparable(before) or {}, "after": comparable(after) or {}},
        result_key: after,
    }


def exit_converged(module, converge, result_key, comparable):
    """A module's converged() result as its exit, or its failure."""
    try:
        result = converged(module, converge, result_key, comparable)
    except RegistryError as exc:
        module.fail_json(msg=str(exc), status=exc.status, code=exc.code)
    module.exit_json(**result)
