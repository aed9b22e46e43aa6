"""A real Debian guest as a QEMU virtual machine (TCG): its own disk, a tap on the bridge and a guest agent.

* Disk: a qcow2 overlay (``disk.qcow2``) on the image's raw ext4 disk, made at the first start with the VM's disk size:
  it survives stop, start and reboot, and `destroy()` removes it. The kernel boots directly (``root=/dev/vda``).
* Seed: as on Proxmox, the VM's smbios1 serial and uuid become the SMBIOS system serial and uuid; cloud-init reads
  them from DMI. A Proxmox cloud-init drive is its ISO (simulator.guests.cidrive), remade at every start, as a CD-ROM on
  virtio-scsi: Proxmox puts it on IDE or SATA, which Debian's cloud kernel cannot drive.
* Network: a tap named like the guest link, enslaved to the simulator's bridge; the NIC (virtio) has the VM's net0
  MAC and takes its address by DHCP. The tap is removed when the guest stops.
* Power: QMP ``system_powerdown`` is the ACPI power button; a guest that powers off makes QEMU exit, and a guest that
  reboots is reset in place by QEMU, which keeps running (as on Proxmox: `poll` never says 'rebooted').
* Agent: qemu-ga on the ``org.qemu.guest_agent.0`` port, reached through ``qga.sock``, answers `interfaces`.
* Emulation (no KVM): one vCPU (the Debian 13 kernel double-faults under TCG with two) and a 256 MiB translation
  cache (QEMU's default of 1 GiB costs as much resident memory).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulator.guests import cidrive, system
from simulator.guests.images import Image
from simulator.guests.network import GuestNetwork
from simulator.guests.spec import GuestSpec

log = logging.getLogger(__name__)

MAX_MEMORY_MB = 1024
AGENT_TIMEOUT_S = 1.5  # interfaces() is polled about once a second per guest
QMP_TIMEOUT_S = 5.0
START_TIMEOUT_S = 30.0

Message = dict[str, Any]


def _answer(message: Message) -> bool:
    return "return" in message or "error" in message


def _talk(path: Path, timeout: float, steps: list[tuple[Message | None, Callable[[Message], bool]]]) -> Message:
    """Send each request (None: send nothing) and read JSON lines until one is its answer; returns the last answer.

    Lines that are not wanted (stale answers, events, garbage) are skipped. Raises OSError on failure or timeout,
    RuntimeError when the answer is an error.
    """
    deadline = time.monotonic() + timeout
    answer: Message = {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        buffer = b""
        for request, wanted in steps:
            if request is not None:
                sock.sendall(json.dumps(request).encode() + b"\n")
            while True:
                while b"\n" not in buffer:
                    sock.settimeout(max(deadline - time.monotonic(), 0.001))
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError(f"{path.name} closed the connection")
                    buffer += chunk
                line, buffer = buffer.split(b"\n", 1)
                try:
                    message = json.loads(line.strip(b"\xff\r "))
                except ValueError:
                    continue
                if isinstance(message, dict) and wanted(message):
                    break
            if "error" in message:
                raise RuntimeError(f"{request and request.get('execute')}: {message['error']}")
            answer = message
    return answer


class QemuGuest:
    kind = "vm"

    def __init__(self, vmid: int, image: Image, network: GuestNetwork, workdir: Path) -> None:
        self.vmid = vmid
        self.image = image
        self.network = network
        self.workdir = workdir
        self.name = network.link_name(vmid)
        self._process: subprocess.Popen[bytes] | None = None
        self._agent_lock = threading.Lock()
        self.spec: GuestSpec | None = None

    @property
    def disk(self) -> Path:
        return self.workdir / "disk.qcow2"

    @property
    def _qmp(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def _qga(self) -> Path:
        return self.workdir / "qga.sock"

    # ------------------------------------------------------------------------------ power

    def start(self, spec: GuestSpec) -> None:
        """Make the disk at the first start, plug the tap and start QEMU; returns once QEMU answers QMP."""
        if self.running():
            return
        self.spec = spec
        self._teardown()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if not self.disk.exists():
                size = max(spec.disk_bytes, self.image.disk.stat().st_size)
                system.run(
                    ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.image.disk.resolve()),
                     str(self.disk), str(size)]
                )  # fmt: skip
            system.run(["ip", "tuntap", "add", "dev", self.name, "mode", "tap"])
            system.run(["ip", "link", "set", self.name, "master", self.network.bridge])
            system.run(["ip", "link", "set", self.name, "up"])
            iso = self.workdir / "cloudinit.iso"
            iso.unlink(missing_ok=True)
            shutil.rmtree(iso.with_suffix(".d"), ignore_errors=True)
            if spec.cloud_init is not None:
                cidrive.write_iso(iso, spec.cloud_init)
            self._boot(spec)
        except BaseException:
            self.kill()
            raise

    def _boot(self, spec: GuestSpec) -> None:
        smbios = "type=1"
        for field, value in (("serial", spec.serial), ("uuid", spec.uuid)):
            if value is not None:
                smbios += f",{field}={value.replace(',', ',,')}"
        command = [
            "qemu-system-x86_64",
            "-machine", "q35",
            "-accel", "tcg,thread=multi,tb-size=256",
            "-cpu", "max",
            "-smp", "1",
            "-m", str(min(spec.memory_mb, MAX_MEMORY_MB)),
            "-nodefaults", "-display", "none", "-monitor", "none", "-vga", "none",
            "-chardev", f"file,id=console0,path={self.workdir / 'console.log'},append=on",
            "-serial", "chardev:console0",
            "-qmp", f"unix:{self._qmp},server=on,wait=off",
            "-kernel", str(self.image.kernel),
            "-initrd", str(self.image.initrd),
            "-append", "root=/dev/vda rw console=ttyS0",
            "-drive", f"file={self.disk},if=virtio,format=qcow2",
            "-netdev", f"tap,id=n0,ifname={self.name},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={spec.mac}",
            "-smbios", smbios,
            "-chardev", f"socket,path={self._qga},server=on,wait=off,id=qga0",
            "-device", "virtio-serial",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]  # fmt: skip
        if spec.cloud_init is not None:
            command += [
                "-device", "virtio-scsi-pci,id=scsi0",
                "-drive", f"file={self.workdir / 'cloudinit.iso'},if=none,id=cidata,format=raw,media=cdrom,readonly=on",
                "-device", "scsi-cd,bus=scsi0.0,drive=cidata",
            ]  # fmt: skip
        with open(self.workdir / "qemu.log", "ab") as output:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        (self.workdir / "qemu.pid").write_text(f"{self._process.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                _talk(self._qmp, QMP_TIMEOUT_S, [(None, lambda m: "QMP" in m)])
                return
            except OSError as error:
                if not self.running():
                    tail = (self.workdir / "qemu.log").read_text(errors="replace").strip()[-500:]
                    raise system.CommandFailed(f"QEMU for guest {self.vmid} exited: {tail}") from error
                if time.monotonic() > deadline:
                    raise system.CommandFailed(f"QEMU for guest {self.vmid} does not answer QMP") from error
                time.sleep(0.05)

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def poll(self) -> str:
        """'running' (also across a guest reboot: QEMU resets in place) or 'stopped' (ended, cleaned up)."""
        if self._process is None:
            return "stopped"
        code = self._process.poll()
        if code is None:
            return "running"
        self._process = None
        log.info("guest %s ended (QEMU exit %s)", self.vmid, code)
        self._teardown()
        return "stopped"

    def shutdown(self) -> None:
        """Press the ACPI power button (the guest stops on its own; `poll` tells when)."""
        if not self.running():
            return
        try:
            _talk(
                self._qmp,
                QMP_TIMEOUT_S,
                [
                    (None, lambda m: "QMP" in m),
                    ({"execute": "qmp_capabilities"}, _answer),
                    ({"execute": "system_powerdown"}, _answer),
                ],
            )
        except (OSError, RuntimeError) as error:
            log.warning("guest %s: system_powerdown failed: %s", self.vmid, error)

    def kill(self) -> None:
        """Hard stop: end QEMU (SIGTERM, then SIGKILL), then clean up."""
        process, self._process = self._process, None
        if process is not None:
            system.terminate(process.pid)
            process.wait(10)
        self._teardown()

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _teardown(self) -> None:
        """Unplug the tap and remove QEMU's sockets and pid file (the disk stays)."""
        system.quiet("ip", "link", "del", self.name)
        for name in ("qemu.pid", "qmp.sock", "qga.sock"):
            (self.workdir / name).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------ agent

    def interfaces(self) -> list[dict[str, Any]] | None:
        """qemu-ga's guest-network-get-interfaces answer, as is; None when the guest or its agent does not answer."""
        if not self.running():
            return None
        token = random.randrange(1, 2**31)
        with self._agent_lock:
            try:
                answer = _talk(
                    self._qga,
                    AGENT_TIMEOUT_S,
                    [
                        ({"execute": "guest-sync", "arguments": {"id": token}}, lambda m: m.get("return") == token),
                        ({"execute": "guest-network-get-interfaces"}, _answer),
                    ],
                )
            except (OSError, RuntimeError):
                return None
        result = answer.get("return")
        return result if isinstance(result, list) else None

    def memory_bytes(self) -> int:
        """QEMU's resident memory, for the benchmark."""
        if self._process is None:
            return 0
        try:
            for line in Path(f"/proc/{self._process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0
