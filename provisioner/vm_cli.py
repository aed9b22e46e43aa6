"""`provisioner vm …`: operator VMs for people, over the HTTP API (/v1/vms), never the database.

`--wait` follows the job's Ansible events as they come (a live line per task); `--json` prints the API's answer for
scripts. Exit codes (provisioner/client.py): 0 done, 1 the job failed (its error printed) or the service failed, 2 bad
input.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

from provisioner.client import ApiClient, ClientError, add_client_arguments

FINISHED = ("successful", "failed", "error", "canceled")
DEFAULT_KEYS = ("~/.ssh/id_ed25519.pub", "~/.ssh/id_ecdsa.pub", "~/.ssh/id_rsa.pub")
WAIT_TIMEOUT_S = 1800


def add_vm_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vm = sub.add_parser("vm", help="make and manage operator VMs over the HTTP API (/v1/vms)")
    actions = vm.add_subparsers(dest="vm_action", required=True)

    create = actions.add_parser("create", help="make a VM")
    create.add_argument("name")
    create.add_argument("--image", required=True, help="a template's id or name (`GET /v1/images`)")
    size = create.add_mutually_exclusive_group()
    size.add_argument("--size", choices=["small", "medium", "large", "xlarge"])
    size.add_argument("--flavour")
    create.add_argument("--cpus", type=int)
    create.add_argument("--memory-mb", type=int)
    create.add_argument("--disk-gb", type=int)
    create.add_argument(
        "--ssh-key", action="append", default=[], help="a public key or a .pub file (repeat; default: ~/.ssh/id_*.pub)"
    )
    create.add_argument("--user", help="the login user (default: the site's)")
    create.add_argument("--lease", type=int, help="seconds until the VM is deleted")
    create.add_argument("--user-data", type=Path, help="a file: the guest's cloud-init user-data (#cloud-config, #!…)")
    create.add_argument("--idempotency-key", help="sent as Idempotency-Key: asking again makes no second VM")

    actions.add_parser("list", help="list VMs").add_argument("--state")
    for name, text in (("show", "one VM"), ("start", "start a VM"), ("reboot", "reboot a VM"), ("delete", "delete")):
        actions.add_parser(name, help=text).add_argument("id")
    stop = actions.add_parser("stop", help="shut a VM down (--force: power it off)")
    stop.add_argument("id")
    stop.add_argument("--force", action="store_true")
    extend = actions.add_parser("extend", help="set the VM's lease: deleted LEASE seconds from now")
    extend.add_argument("id")
    extend.add_argument("--lease", type=int, required=True)
    logs = actions.add_parser(
        "logs", help="the VM's job events, then its guest's cloud-init output (--follow: job events as they come)"
    )
    logs.add_argument("id")
    logs.add_argument("--follow", action="store_true")
    ssh = actions.add_parser(
        "ssh", help="ssh to the VM as its user, trusting only the host key it phoned home (after --: the command)"
    )
    ssh.add_argument("id")
    ssh.add_argument("-i", "--identity", help="the private key to log in with (default: ssh's)")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    keys = actions.add_parser("keys", help="list a VM's SSH keys, or add (--add) or remove (--remove) one")
    keys.add_argument("id")
    change = keys.add_mutually_exclusive_group()
    change.add_argument("--add", metavar="KEY", help="a public key or a .pub file")
    change.add_argument("--remove", metavar="FINGERPRINT", help="as `ssh-keygen -lf` shows it: SHA256:…")

    for parser in actions.choices.values():
        add_client_arguments(parser)
        if parser.prog.split()[-1] in ("create", "start", "stop", "reboot", "delete", "keys"):
            parser.add_argument("--wait", action="store_true", help="follow the job until it ends")
    vm.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    console = Console(stderr=True)
    try:
        client = ApiClient.from_args(args)
        code = COMMANDS[args.vm_action](client, args, console)
    except ClientError as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:  # leaving `logs --follow` or a `--wait`: the job goes on
        raise SystemExit(130) from None
    raise SystemExit(code)


def create(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    body: dict[str, Any] = {"name": args.name, "image": args.image, "ssh_keys": _keys(args.ssh_key)}
    raw = {"cpus": args.cpus, "memory_mb": args.memory_mb, "disk_gb": args.disk_gb}
    body |= {k: v for k, v in raw.items() if v is not None}
    for field in ("size", "flavour", "user", "lease"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if args.user_data is not None:
        try:
            body["user_data"] = args.user_data.read_text(encoding="utf-8")
        except OSError as exc:
            raise ClientError(f"cannot read {args.user_data}: {exc.strerror}", exit_code=2) from None
    if not (args.size or args.flavour or any(raw.values())):
        body["size"] = "small"
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    accepted = client.request("POST", "/v1/vms", json=body, headers=headers)
    return _after(client, args, console, accepted["job"], accepted["vm"]["id"], want="running")


def list_vms(client: ApiClient, args: argparse.Namespace, _console: Console) -> int:
    vms: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = client.get("/v1/vms", params={k: v for k, v in (("state", args.state), ("after", after)) if v})
        vms += page["vms"]
        after = page["next_after"]
        if after is None:
            break
    if args.json:
        print(json.dumps(vms, indent=2))
        return 0
    table = Table("id", "name", "state", "address", "size", "owner", "expires")
    for vm in vms:
        size = f"{vm['resources']['cpus']} vCPU {vm['resources']['memory_mb']} MB {vm['resources']['disk_gb']} GB"
        table.add_row(vm["id"], vm["name"], vm["state"], vm["address"] or "", size, vm["owner"], vm["expires_at"] or "")
    Console().print(table)
    return 0


def show(client: ApiClient, args: argparse.Namespace, _console: Console) -> int:
    vm = client.get(f"/v1/vms/{args.id}")
    if args.json:
        print(json.dumps(vm, indent=2))
        return 0
    out = Console()
    for field in ("id", "name", "owner", "state", "error", "image", "flavour", "address", "expires_at", "created_at"):
        if vm.get(field) is not None:
            out.print(f"[bold]{field:<11}[/bold] {vm[field]}", highlight=False)
    if vm["ssh"]:
        out.print(f"[bold]{'ssh':<11}[/bold] {vm['ssh']['command']}", highlight=False)
    for job in vm.get("jobs") or []:
        out.print(f"  job {job['id']} {job['kind']:<8} {job['state']:<10} {job['error'] or ''}", highlight=False)
    return 0


def power(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    action = args.vm_action
    params = {"force": "true"} if action == "stop" and args.force else None
    job = client.request("POST", f"/v1/vms/{args.id}/{action}", params=params)["job"]
    want = {"start": "running", "reboot": "running", "stop": "stopped"}[action]
    return _after(client, args, console, job, args.id, want=want)


def delete(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    job = client.request("DELETE", f"/v1/vms/{args.id}")["job"]
    return _after(client, args, console, job, args.id, want=None)


def extend(client: ApiClient, args: argparse.Namespace, _console: Console) -> int:
    vm = client.request("PATCH", f"/v1/vms/{args.id}", json={"lease": args.lease})
    print(json.dumps(vm, indent=2) if args.json else f"{vm['id']} is deleted at {vm['expires_at']}")
    return 0


def logs(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    after, cloud_init = 0, None
    while True:
        params = {"after": after, "limit": 1000, "cloud_init": str(not args.follow and after == 0).lower()}
        page = client.get(f"/v1/vms/{args.id}/logs", params=params)
        cloud_init = page.get("cloud_init") or cloud_init
        for line in page["lines"]:
            if args.json:
                print(json.dumps(line))
            elif line["event"] == "playbook_on_task_start" and line["task"]:
                print(f"{line['at']}  {line['kind']:<8} {line['task']}")
            elif line["stdout"].strip():
                print(f"{line['at']}  {line['kind']:<8} {line['stdout'].strip()}")
        after = page["next_after"]
        if args.follow:
            if not page["lines"]:
                time.sleep(1.0)
        elif not page["lines"]:
            break
    if cloud_init is not None:
        if args.json:
            print(json.dumps({"cloud_init": cloud_init}))
        elif cloud_init["error"]:
            console.print(f"cloud-init output: {cloud_init['error']}", highlight=False)
        else:
            print("--- cloud-init output" + (" (its end)" if cloud_init["truncated"] else "") + " ---")
            print(cloud_init["output"], end="")
    return 0


def ssh(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    vm = client.get(f"/v1/vms/{args.id}")
    if not vm["ssh"]:
        console.print(f"VM {args.id} has no address yet (state: {vm['state']})")
        return 1
    command = [c for c in args.command if c != "--"]
    login = vm["ssh"]
    options = ["-p", str(login["port"])] + (["-i", args.identity, "-o", "IdentitiesOnly=yes"] if args.identity else [])
    if login.get("host_key"):  # the key the guest phoned home: no trust-on-first-use prompt, no stale entry
        options += ["-o", f"UserKnownHostsFile={_known_hosts(login)}", "-o", "StrictHostKeyChecking=yes"]
    os.execvp("ssh", ["ssh", *options, f"{login['user']}@{login['host']}", *command])
    return 0  # not reached


def keys(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    path = f"/v1/vms/{args.id}/ssh-keys"
    if args.add or args.remove:
        if args.add:
            changed = client.request("POST", path, json={"key": _keys([args.add])[0]})
        else:
            changed = client.request("DELETE", f"{path}/{quote(args.remove, safe=':')}")
        if changed["job"] is None:
            print(json.dumps(changed, indent=2) if args.json else f"VM {args.id}: its seed has the change")
            return 0
        return _after(client, args, console, changed["job"], args.id, want=None)
    listed = client.get(path)
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    table = Table(title=f"VM {args.id}: keys {listed['sync']}")
    table.add_column("fingerprint", no_wrap=True, min_width=50)  # whole, to copy into --remove
    for column in ("type", "comment", "site"):
        table.add_column(column, overflow="ellipsis")
    for key in listed["keys"]:
        table.add_row(key["fingerprint"], key["type"], key["comment"], "yes" if key["site"] else "")
    Console().print(table)
    return 0


def _known_hosts(login: dict[str, Any]) -> Path:
    """A known_hosts of the CLI's own with this VM's phoned-home key for its address (an older entry replaced)."""
    path = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "provisioner" / "known_hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    host = login["host"] if login["port"] == 22 else f"[{login['host']}]:{login['port']}"
    kept = [line for line in (path.read_text().splitlines() if path.exists() else []) if line.split(" ", 1)[0] != host]
    path.write_text("\n".join([*kept, f"{host} {login['host_key']}"]) + "\n")
    return path


def _after(
    client: ApiClient, args: argparse.Namespace, console: Console, job: dict[str, Any], vm_id: str, want: str | None
) -> int:
    """Print what was accepted; with --wait, follow the job and say how it ended (the exit code)."""
    if not args.wait:
        print(json.dumps(job, indent=2) if args.json else f"VM {vm_id}: {job['kind']} job {job['id']} accepted")
        return 0
    ended = follow(client, job["id"], console, quiet=args.json)
    if ended["state"] != "successful":
        console.print(f"[red]{ended['kind']} {ended['state']}: {ended['error'] or 'no error given'}[/red]")
        return 1
    if want is None:
        console.print(f"VM {vm_id}: {ended['kind']} done")
        return 0
    vm = _until_state(client, vm_id, want)
    if args.json:
        print(json.dumps(vm, indent=2))
    else:
        console.print(f"VM {vm_id} is {vm['state']}" + (f": {vm['ssh']['command']}" if vm.get("ssh") else ""))
    return 0 if vm["state"] == want else 1


def follow(client: ApiClient, job_id: str, console: Console, quiet: bool = False) -> dict[str, Any]:
    """The job once it ended, showing its tasks as its events come."""
    counter = -1
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    with console.status(f"job {job_id}: waiting for a worker", spinner="dots") as status:
        while time.monotonic() < deadline:
            for event in client.get(f"/v1/jobs/{job_id}/events", params={"after": counter}):
                counter = event["counter"]
                if event["task"] and event["event"] == "playbook_on_task_start":
                    status.update(f"job {job_id}: {event['task']}")
                    if not quiet:
                        console.print(f"  {event['task']}", highlight=False)
            job = client.get(f"/v1/jobs/{job_id}")
            if job["state"] in FINISHED:
                return job  # type: ignore[no-any-return]
            time.sleep(0.5)
    raise ClientError(f"job {job_id} did not end within {WAIT_TIMEOUT_S} s")


def _until_state(client: ApiClient, vm_id: str, want: str, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        vm = client.get(f"/v1/vms/{vm_id}")
        if vm["state"] in (want, "error") or time.monotonic() > deadline:
            return vm  # type: ignore[no-any-return]
        time.sleep(0.5)


def _keys(given: list[str]) -> list[str]:
    """Each --ssh-key as a key: a file's content if it names one; none given: the user's default public key."""
    if not given:
        given = [p for p in DEFAULT_KEYS if Path(p).expanduser().is_file()][:1]
        if not given:
            raise ClientError("no --ssh-key and no ~/.ssh/id_*.pub to default to", exit_code=2)
    keys = []
    for value in given:
        path = Path(value).expanduser()
        keys.append(path.read_text(encoding="utf-8").strip() if path.is_file() else value)
    return keys


COMMANDS = {
    "create": create,
    "list": list_vms,
    "show": show,
    "start": power,
    "stop": power,
    "reboot": power,
    "delete": delete,
    "extend": extend,
    "logs": logs,
    "ssh": ssh,
    "keys": keys,
}
