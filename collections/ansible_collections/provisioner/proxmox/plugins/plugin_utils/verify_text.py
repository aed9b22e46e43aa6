# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""How the verify role's report shows values: without secrets (seed URLs, user-data), keys shortened."""

import base64
import binascii
import hashlib
import json
import re

SEED_PLACEHOLDER = "<the requested seed URL>"
# URLs in what the guest says (cloud-init's messages may name the seed URL, which carries the VM's token) keep
# only their scheme, host and port.
URL_PATH = re.compile(r"""(https?://[^/\s'"\])]+)/[^\s'"\]),]*""")
# A public key line (authorized_keys options before the type are allowed): type and key are groups 1 and 2.
PUBLIC_KEY = re.compile(r"^(?:.*?\s)?((?:ssh|ecdsa|sk)-[A-Za-z0-9@.-]+)\s+([A-Za-z0-9+/]+=*)(?:\s.*)?$")
# A public key shortened for the report: type, the first and last 8 characters of the key, the comment.
KEY_SHORT = re.compile(r"^(\S+)\s+(\S{8})\S*(\S{8})(\s.*)?$")


def without_url_paths(text):
    return URL_PATH.sub(r"\1/<path>", str(text))


def short_key(key):
    return KEY_SHORT.sub(r"\1 \2...\3\4", key)


def key_and_type(line):
    """'type key' of a public key line, or None when it is not one."""
    line = line.strip()
    return PUBLIC_KEY.sub(r"\1 \2", line) if PUBLIC_KEY.match(line) else None


def digest(text):
    """What the report shows of a user-data: a sha256 prefix and its length."""
    return "sha256 {} ({} characters)".format(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], len(text))


def shown(value):
    """A check's expected or actual value as a report line shows it (strings as they are, the rest as JSON)."""
    return value if isinstance(value, str) else json.dumps(value)


def canonical_json(value):
    return json.dumps(value, sort_keys=True)


def from_base64(value):
    """The text a base64 value holds; the value itself when it is not base64 text."""
    try:
        return base64.b64decode(str(value), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return str(value)


def last_line(text):
    lines = str(text).strip().splitlines()
    return lines[-1] if lines else ""


def as_int(value):
    """A whole number as Jinja's int filter reads it: 0 for what is not one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return 0


def as_bool(value):
    """True or false as Ansible's bool filter reads a value (yes, on, 1, true; any case)."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("yes", "on", "1", "true")
