"""A real Debian guest as a systemd-nspawn container: its own disk layer, network namespace and DHCP address.

* Disk: an overlayfs whose lower layer is the cached image tree and whose upper layer is the guest's own
  (``disk/upper``): it survives stop, start and reboot, and `destroy()` removes it.
* Seed: cloud-init does not read DMI inside a container; it reads the kernel command line of the container's
  init, ``/proc/1/cmdline``. The SMBIOS serial Proxmox would give a VM is passed there, as the init's one argument.
  A Proxmox cloud-init drive, which a container cannot mount, is its NoCloud seed directory (simulator.guests.cidrive).
* Network: a namespace with a veth named like the guest link, whose guest end is ``eth0`` with the VM's net0 MAC,
  the host end enslaved to the simulator's bridge; the guest takes its address by DHCP like a VM would.
* Power: SIGTERM to nspawn is a clean poweroff of the guest, SIGKILL to the guest's init a hard stop; a guest that
  reboots itself makes nspawn exit with 133 and the backend starts it again on the same disk.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from simulator.guests import cidrive, system
from simulator.guests.images import Image
from simulator.guests.network import GuestNetwork
from simulator.guests.spec import GuestSpec, agent_interfaces

log = logging.getLogger(__name__)

REBOOT_EXIT = 133  # systemd-nspawn's exit status when the container asked for a reboot


class ContainerGuest:
    kind = "container"

    def __init__(self, vmid: int, image: Image, network: GuestNetwork, workdir: Path) -> None:
        self.vmid = vmid
        self.image = image
        self.network = network
        self.workdir = workdir
        self.name = network.link_name(vmid)
        self._process: subprocess.Popen[bytes] | None = None
        self.spec: GuestSpec | None = None

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    @property
    def _netns_path(self) -> Path:
        return Path("/run/netns") / self.name

    # ------------------------------------------------------------------------------ power

    def start(self, spec: GuestSpec) -> None:
        """Mount the disk, plug the network and boot; returns once nspawn runs (the guest boots on its own)."""
        if self.running():
            return
        self.spec = spec
        self._teardown()
        upper, work = self.workdir / "disk" / "upper", self.workdir / "disk" / "work"
        for path in (upper, work, self.root):
            path.mkdir(parents=True, exist_ok=True)
        try:
            system.run(
                [
                    "mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={self.image.rootfs},upperdir={upper},workdir={work}", str(self.root),
                ]
            )  # fmt: skip
            if spec.cloud_init is not None:
                cidrive.write_seed_dir(self.root, spec.cloud_init)
            else:
                cidrive.remove_seed_dir(self.root)
            self._plug()
            self._boot(spec)
        except BaseException:
            self._teardown()
            raise

    def _plug(self) -> None:
        assert self.spec is not None
        system.run(["ip", "netns", "add", self.name])
        system.run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        system.run(
            ["ip", "link", "add", self.name, "type", "veth", "peer", "name", "eth0",
             "address", self.spec.mac, "netns", self.name]
        )  # fmt: skip
        system.run(["ip", "link", "set", self.name, "master", self.network.bridge])
        system.run(["ip", "link", "set", self.name, "up"])

    def _boot(self, spec: GuestSpec) -> None:
        command = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--link-journal=no",
            "--console=pipe",
            f"--directory={self.root}",
            f"--machine={self.name}",
            f"--network-namespace-path={self._netns_path}",
            "--capability=CAP_NET_ADMIN",
        ]
        if spec.uuid:
            command.append(f"--uuid={spec.uuid}")
        command.append("--")
        if spec.serial:
            command.append(spec.serial)
        console = open(self.workdir / "console.log", "ab")  # noqa: SIM115 (nspawn writes to it)
        with console:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
            )
        (self.workdir / "nspawn.pid").write_text(f"{self._process.pid}\n")

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def poll(self) -> str:
        """'running', 'stopped' (powered off or killed: cleaned up), or 'rebooted' (started again on its disk)."""
        if self._process is None:
            return "stopped"
        code = self._process.poll()
        if code is None:
            return "running"
        self._process = None
        if code == REBOOT_EXIT and self.spec is not None:
            log.info("guest %s rebooted itself", self.vmid)
            self._teardown()
            self.start(self.spec)
            return "rebooted"
        log.info("guest %s ended (nspawn exit %s)", self.vmid, code)
        self._teardown()
        return "stopped"

    def shutdown(self) -> None:
        """Ask the guest to power off cleanly (it stops on its own; `poll` tells when)."""
        if self.running():
            assert self._process is not None
            self._process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Hard stop: kill the guest's init (its whole PID namespace goes with it), then clean up."""
        process = self._process
        if process is None:
            self._teardown()
            return
        init = self._init_pid()
        if init is not None:
            system.kill_now(init)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        self._process = None
        self._teardown()

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _init_pid(self) -> int | None:
        """The host PID of the guest's init: the process of the guest's namespace that is PID 1 in its own."""
        for pid in system.netns_pids(self.name):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and line.split()[-1] == "1":
                    return pid
        return None

    def _teardown(self) -> None:
        """Unplug and unmount (the disk layer stays)."""
        if self._netns_path.exists():
            system.remove_netns(self.name)
        system.quiet("ip", "link", "del", self.name)
        system.unmount(self.root)
        (self.workdir / "nspawn.pid").unlink(missing_ok=True)

    # ------------------------------------------------------------------------------ agent

    def interfaces(self) -> list[dict[str, Any]] | None:
        """network-get-interfaces as qemu-ga would answer it, read from the guest's namespace; None when down."""
        if not self.running() or not self._netns_path.exists():
            return None
        result = system.run(["ip", "-n", self.name, "-j", "addr", "show"], check=False)
        if result.returncode != 0:
            return None
        try:
            return agent_interfaces(json.loads(result.stdout or "[]"))
        except ValueError:
            return None

    def memory_bytes(self) -> int:
        """Resident memory of every process in the guest (its namespace), for the benchmark."""
        total = 0
        for pid in system.netns_pids(self.name):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total
