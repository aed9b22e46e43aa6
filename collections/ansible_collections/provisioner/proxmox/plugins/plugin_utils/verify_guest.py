# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The verify role's checks inside the guest over SSH: authorized_keys, sudo, hostname, meta, cloud-init, user-data.

observed holds the results the role registers in the guest (tasks/guest.yml): guest_login (wait_for_connection),
guest_status_run (cloud-init status --format json), guest_sudo, guest_hostname, guest_meta (cloud-init query
ds.meta_data.meta), guest_passwd (getent), guest_keys_file and guest_user_data_file (slurp).
"""

import json
import re
from collections.abc import Mapping

from ansible_collections.provisioner.proxmox.plugins.plugin_utils.verify_text import (
    PUBLIC_KEY,
    as_int,
    canonical_json,
    digest,
    from_base64,
    key_and_type,
    last_line,
    short_key,
    without_url_paths,
)

JSON_OBJECT = re.compile(r"\s*[{]")
# The registered results read, each observed as guest_<name>.
RESULTS = ("status_run", "sudo", "hostname", "meta", "passwd", "keys_file", "user_data_file")


def guest_mode(value):
    """'auto', True or False, from verify_guest as given (a bool, or a string from -e)."""
    text = str(value).lower()
    return "auto" if text == "auto" else text in ("true", "yes")


class GuestFacts:
    """Whether the guest checks run, where to log in, whether the login worked, and what the guest said."""

    def __init__(self, observed, e, proxmox, seed):
        mode = guest_mode(e["guest"])
        login_configured = e["user"] is not None and e["guest_private_key_file"] is not None
        runs = e["power_state"] == "running" and proxmox.status == "running" and bool(proxmox.addresses)
        self.applies = mode is True or (mode == "auto" and runs and login_configured)
        if e["address"] is not None and e["address"] in proxmox.addresses:
            self.address = e["address"]
        else:
            self.address = proxmox.addresses[0] if proxmox.addresses else ""
        self.login = observed.get("guest_login") or {"skipped": True}
        self.up = (
            self.applies
            and bool(self.address)
            and not self.login.get("skipped", False)
            and "msg" not in self.login
            and not self.login.get("unreachable", False)
        )
        self.results = {name: observed.get(f"guest_{name}") or {} for name in RESULTS}
        self.status = parsed_status(self.results["status_run"])
        self.errors = [without_url_paths(error) for error in self.status.get("errors") or []]
        self.script_errors = [error for error in self.errors if re.search(r"scripts[-_]user", error)]
        passwd = str(self.results["passwd"].get("stdout", "")).split(":")
        self.home = passwd[5] if len(passwd) > 5 else ""
        lines = from_base64(self.results["keys_file"].get("content", "")).splitlines()
        self.keys = sorted({key_and_type(line) for line in lines if usable_key_line(line)})
        self.keys_wanted = sorted({key_and_type(key) for key in e["ssh_keys"] or [] if key_and_type(key)})
        self.user_data = from_base64(self.results["user_data_file"].get("content", ""))
        self.seed_applies = seed.applies
        meta = seed.meta if isinstance(seed.meta, Mapping) else {}
        self.hostname_wanted = e["hostname"] if e["hostname"] is not None else meta.get("local-hostname")
        self.down = self.why_down(e)

    def why_down(self, e):
        """Why the guest could not be checked ('' when it could, or when the guest checks do not run)."""
        if self.up or not self.applies:
            return ""
        if not self.address:
            return "no guest address to log in to (the VM does not run, or its guest agent reported none)"
        # The last line of ssh's error, such as "Host key verification failed." or "Permission denied (publickey).".
        reason = last_line(self.login.get("msg", "unreachable")).split(": ")[-1]
        return "no login as {}@{} within {} s: {}".format(
            e["user"], self.address, e["guest_timeout"], without_url_paths(reason)
        )


def known_hosts_line(e, address):
    """The temporary known_hosts' line: the pinned host key for the address, or '' (trust on first use)."""
    if e["guest_host_key"] is None:
        return ""
    host = address if as_int(e["guest_port"]) == 22 else "[{}]:{}".format(address, e["guest_port"])
    return "{} {}".format(host, PUBLIC_KEY.sub(r"\1 \2", str(e["guest_host_key"]).strip()))


def usable_key_line(line):
    line = line.strip()
    return bool(line) and not line.startswith("#") and key_and_type(line) is not None


def parsed_status(run):
    """cloud-init status --format json, parsed ({} when it did not answer a JSON object)."""
    stdout = str(run.get("stdout", ""))
    if not JSON_OBJECT.match(stdout):
        return {}
    try:
        status = json.loads(stdout)
    except ValueError:
        return {}
    return status if isinstance(status, Mapping) else {}


def checks(g, e):
    """The guest checks, a check being (name, expected, actual, pass); expected None: the check does not run.

    None runs unless the guest checks apply; when the guest could not be logged in to, each fails with the reason.
    """
    return [
        ssh_keys(g, e),
        sudo(g),
        hostname(g),
        metadata(g, e),
        cloud_init(g),
        user_data(g, e),
    ]


def ssh_keys(g, e):
    """The user's authorized_keys holds exactly the keys asked for (order, comments and options ignored)."""
    expected = [short_key(key) for key in g.keys_wanted] if g.applies and e["ssh_keys"] is not None else None
    keys_file = g.results["keys_file"]
    if g.down:
        actual = g.down
    elif not g.home:
        actual = "no user {}".format(e["user"])
    elif "content" not in keys_file:
        actual = "no {}/.ssh/authorized_keys: {}".format(g.home, keys_file.get("msg", "unreadable"))
    else:
        actual = [short_key(key) for key in g.keys]
    return ("guest_ssh_keys", expected, actual, g.up and "content" in keys_file and g.keys == g.keys_wanted)


def sudo(g):
    result = g.results["sudo"]
    rc = result.get("rc", 1)
    if g.down:
        actual = g.down
    else:
        actual = "sudo -n true: exit {}".format(result.get("rc", "unknown"))
        if rc != 0:
            actual += ", " + next(iter(result.get("stderr_lines") or []), "")
    expected = "sudo -n true: exit 0" if g.applies else None
    return ("guest_sudo", expected, actual, g.up and rc == 0)


def hostname(g):
    """The hostname is verify_hostname, or the seed's local-hostname (not checked when neither is known)."""
    expected = None
    if g.applies and g.hostname_wanted is not None:
        expected = g.hostname_wanted
    elif g.applies and g.seed_applies:
        expected = "the seed's local-hostname"
    have = str(g.results["hostname"].get("stdout", "")).strip()
    unread = " (the seed's meta-data was not read)" if g.hostname_wanted is None else ""
    actual = g.down or have + unread
    passed = g.up and g.hostname_wanted is not None and have == str(g.hostname_wanted)
    return ("guest_hostname", expected, actual, passed)


def metadata(g, e):
    """cloud-init query ds.meta_data.meta equals verify_metadata."""
    result = g.results["meta"]
    rc = result.get("rc", 1)
    stdout = str(result.get("stdout", ""))
    answered = rc == 0 and JSON_OBJECT.match(stdout) is not None
    meta = parsed_json(stdout) if answered else None
    expected = canonical_json(e["metadata"]) if g.applies and e["metadata"] is not None else None
    if g.down:
        actual = g.down
    elif answered:
        actual = canonical_json(meta)
    else:
        complaint = next(iter(reversed(result.get("stderr_lines") or [])), "no mapping")
        actual = "cloud-init query ds.meta_data.meta: exit {}, {}".format(
            result.get("rc", "unknown"), without_url_paths(complaint)
        )
    return ("guest_metadata", expected, actual, g.up and answered and meta == e["metadata"])


def parsed_json(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


def cloud_init(g):
    """cloud-init status says done, exit 0, or 2 (done with recoverable errors or deprecations)."""
    run = g.results["status_run"]
    expected = "status done (exit 0, or 2: done with recoverable errors or deprecations)" if g.applies else None
    status = str(g.status.get("status", ""))
    if g.down:
        actual = g.down
    else:
        extended = str(g.status.get("extended_status", status))
        actual = "status {}{} (exit {}){}".format(
            g.status.get("status", "unreadable"),
            f" ({extended})" if extended != status else "",
            run.get("rc", "unknown"),
            ": " + "; ".join(g.errors) if g.errors else "",
        )
    return ("guest_cloud_init", expected, actual, g.up and run.get("rc", 1) in (0, 2) and status == "done")


def user_data(g, e):
    """cloud-init's copy of the user-data is exactly verify_user_data, and no error names scripts-user."""
    wanted = e["user_data"]
    expected = f"{digest(wanted)}, scripts-user without error" if g.applies and wanted is not None else None
    copy = g.results["user_data_file"]
    if g.down:
        actual = g.down
    elif "content" not in copy:
        actual = "no user-data from cloud-init: {}".format(copy.get("msg", "unreadable"))
    else:
        ran = "scripts-user without error" if not g.script_errors else "; ".join(g.script_errors)
        actual = f"{digest(g.user_data)}, {ran}"
    passed = g.up and "content" in copy and g.user_data == wanted and bool(g.status) and not g.script_errors
    return ("guest_user_data", expected, actual, passed)
