# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The verify role's checks of what the VM's NoCloud seed serves: meta-data, the user and its keys, user-data.

observed["seed"] is the role's registered uri loop over the documents (tasks/seed.yml), each result carrying its
document's name in __verify_seed_document. The documents hold the seed URL (vendor-data's phone_home): the report
shows only what the checks need.
"""

from collections.abc import Mapping

import yaml
from ansible_collections.provisioner.proxmox.plugins.plugin_utils.verify_text import (
    SEED_PLACEHOLDER,
    as_bool,
    as_int,
    canonical_json,
    digest,
    short_key,
)

DOCUMENTS = ("meta-data", "user-data", "vendor-data")
NOT_YAML = object()


class SeedFacts:
    """What the seed served: each document's status and body, meta-data and vendor-data parsed."""

    def __init__(self, observed, e):
        self.applies = bool(e["seed_url"]) and as_bool(e["fetch_seed"])
        self.pages = pages(observed.get("seed") or {}, e["seed_url"])
        self.meta = parsed(self.pages["meta-data"])
        self.vendor = parsed(self.pages["vendor-data"])
        users = (self.vendor.get("users") or []) if isinstance(self.vendor, Mapping) else []
        self.users = [u for u in users if isinstance(u, Mapping)]
        self.user_names = [str(u["name"]) for u in self.users if u.get("name")]

    def served_keys(self, user):
        """The keys of the user asked for (of every user when none is), stripped."""
        keys = []
        for entry in self.users:
            if user is None or ("name" in entry and entry["name"] == user):
                found = entry.get("ssh_authorized_keys", [])
                keys.extend(found if isinstance(found, list) else [found])
        return [str(key).strip() for key in keys]


def pages(registered, seed_url):
    """{document: {status, content, http}}: http is what the report shows ("HTTP 404", or the error with the seed
    URL blanked out); -1 stands for no answer. Documents not fetched are there too."""
    found = {}
    for result in registered.get("results") or []:
        if "status" not in result:
            continue
        status = as_int(result["status"])
        message = str(result.get("msg", ""))
        if seed_url:
            message = message.replace(seed_url, SEED_PLACEHOLDER)
        found[result["__verify_seed_document"]] = {
            "status": status,
            "content": result.get("content") or "",
            "http": f"HTTP {status}" if status > 0 else f"no answer: {message}",
        }
    for document in DOCUMENTS:
        found.setdefault(document, {"status": -1, "content": "", "http": "not fetched"})
    return found


def parsed(page):
    """The document's YAML, NOT_YAML for a body that is not YAML, None when it was not served."""
    if page["status"] != 200:
        return None
    try:
        return yaml.safe_load(page["content"])
    except yaml.YAMLError:
        return NOT_YAML


def checks(f, e):
    """The seed checks, a check being (name, expected, actual, pass); expected None: the check does not run."""
    return [meta_data(f, e), user(f, e), ssh_keys(f, e), user_data(f, e)]


def meta_data(f, e):
    expected = None
    if f.applies:
        wanted = e["metadata"]
        expected = "HTTP 200, a mapping with instance-id" + (
            "" if wanted is None else f", meta {canonical_json(wanted)}"
        )
    page, meta = f.pages["meta-data"], f.meta
    if page["status"] != 200:
        actual = page["http"]
    elif not isinstance(meta, Mapping):
        actual = "HTTP 200, " + ("not valid YAML" if meta is NOT_YAML else "not a YAML mapping")
    else:
        actual = "HTTP 200, instance-id {}, meta {}".format(
            meta.get("instance-id", "(none)"), canonical_json(meta.get("meta"))
        )
    passed = (
        isinstance(meta, Mapping)
        and "instance-id" in meta
        and (e["metadata"] is None or meta.get("meta") == e["metadata"])
    )
    return ("seed_meta_data", expected, actual, passed)


def user(f, e):
    page = f.pages["vendor-data"]
    if page["status"] != 200:
        actual = "vendor-data: " + page["http"]
    elif not isinstance(f.vendor, Mapping):
        actual = "vendor-data is not a YAML mapping"
    else:
        actual = "users " + ", ".join(f.user_names) if f.user_names else "no users"
    return ("seed_user", e["user"] if f.applies else None, actual, e["user"] in f.user_names)


def ssh_keys(f, e):
    """Every key asked for is served (more are fine)."""
    wanted = [str(key).strip() for key in e["ssh_keys"] or []]
    expected = [short_key(key) for key in wanted] if f.applies and wanted else None
    served = f.served_keys(e["user"])
    if not isinstance(f.vendor, Mapping):
        actual = "vendor-data not read (see seed_user)"
    else:
        actual = [short_key(key) for key in served]
    return ("seed_ssh_keys", expected, actual, isinstance(f.vendor, Mapping) and not set(wanted) - set(served))


def user_data(f, e):
    """The user-data is served (and is exactly e["user_data"] when given); the report shows its digest."""
    wanted = e["user_data"]
    expected = None
    if f.applies:
        expected = "HTTP 200" + ("" if wanted is None else f", {digest(wanted)}")
    page = f.pages["user-data"]
    actual = page["http"] if page["status"] != 200 else f"HTTP 200, {digest(page['content'])}"
    passed = page["status"] == 200 and (wanted is None or page["content"] == wanted)
    return ("seed_user_data", expected, actual, passed)
