# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The VM's spec: name, cores, memory, tags, description and the guest agent option (config keys)."""

import re

DNS_NAME = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$")
# The name identifies the VM (the module refuses a VM with another name) more than it sets anything, so it
# alone does not make the module read the config.
SPEC_OPTIONS = ("cores", "memory_mb", "tags", "description", "agent")


def input_problems(p):
    problems = []
    if p["name"] is not None and not DNS_NAME.match(p["name"]):
        problems.append("name {!r} is not a valid DNS name".format(p["name"]))
    for key, least in (("cores", 1), ("memory_mb", 16)):
        if p[key] is not None and p[key] < least:
            problems.append(f"{key} must be at least {least} (got {p[key]})")
    return problems


def is_asked(p):
    """Whether the call converges any of the spec (unset, empty and false options leave it alone)."""
    return any(p[option] for option in SPEC_OPTIONS)


def config_problems(p, config):
    if p["name"] is not None and config.get("name") != p["name"]:
        return [
            "VMID {} now holds {!r}, not {!r}; refusing to adopt it".format(p["vmid"], config.get("name"), p["name"])
        ]
    return []


def updates(p, config):
    """The spec's config keys that differ from config, with their wanted values."""
    wanted = {}
    if p["name"] is not None and config.get("name") != p["name"]:
        wanted["name"] = p["name"]
    if p["cores"] is not None and int(config.get("cores", 1)) != p["cores"]:
        wanted["cores"] = p["cores"]
    if p["memory_mb"] is not None and int(config.get("memory", 0)) != p["memory_mb"]:
        wanted["memory"] = p["memory_mb"]
    if p["tags"] and tag_set(";".join(p["tags"])) != tag_set(config.get("tags")):
        wanted["tags"] = ";".join(tag_set(";".join(p["tags"])))
    if p["description"] and str(config.get("description", "")).strip() != p["description"].strip():
        wanted["description"] = p["description"]
    if p["agent"]:
        agent = agent_value(config.get("agent"))
        if agent is not None:
            wanted["agent"] = agent
    return wanted


def tag_set(value):
    return sorted({t for t in re.split(r"[,; ]+", str(value or "")) if t})


def agent_value(current):
    """The agent option with enabled=1, other options kept; None when the agent is already on."""
    parts = [x for x in str(current or "0").split(",") if x]
    if parts and (parts[0] in ("1", "enabled=1") or "enabled=1" in parts[1:]):
        return None
    return ",".join(["enabled=1"] + [x for x in parts if not re.match(r"^(0|1|enabled=.*)$", x)])
