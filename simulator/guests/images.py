"""Guest images: Debian root trees built once with mmdebstrap, cached by the hash of their recipe.

A recipe names a Debian suite and the packages and hooks that make it a cloud guest; its key is the hash of
everything that goes into the build, so a changed recipe is a new image and an unchanged one is never rebuilt.
Images live under the user's cache directory (``$XDG_CACHE_HOME/proxmox-provisioner/guest-images``, or
``PROVISIONER_GUEST_IMAGE_CACHE``), one directory per image:

* container images: ``rootfs/``, the tree systemd-nspawn boots (the read-only lower layer of every guest);
* vm images: ``disk.img`` (ext4 of the same tree, the backing file of every guest's qcow2), ``vmlinuz`` and
  ``initrd.img`` for a direct kernel boot.

A build runs under an exclusive lock on the image, in a temporary directory renamed into place when complete, so
parallel test workers or services build an image once and nobody ever sees half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Bump when the build procedure itself changes in a way the recipe fields do not show.
BUILD_REVISION = 1
BUILD_TIMEOUT_S = 1200
READY = "image.json"

COMMON_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "cloud-init",
    "openssh-server",
    "sudo",
    "iproute2",
    "netbase",
    "procps",
    "locales",
    "e2fsprogs",
)
VM_PACKAGES = ("linux-image-cloud-amd64", "initramfs-tools", "qemu-guest-agent")

# cloud-init's locale module fails (and `cloud-init status` says error) without a generated locale.
LOCALE_HOOK = (
    'echo "en_US.UTF-8 UTF-8" >"$1/etc/locale.gen" && chroot "$1" locale-gen >/dev/null '
    '&& echo LANG=en_US.UTF-8 >"$1/etc/default/locale"'
)
# Every guest gets its own machine id (DHCP client ids derive from it): none is baked into the image.
MACHINE_ID_HOOK = ': >"$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"'
# RSA host keys take seconds to make under emulation; the guests phone home their ed25519 key.
HOST_KEYS_HOOK = 'printf "ssh_genkeytypes: [ed25519]\\n" >"$1/etc/cloud/cloud.cfg.d/90-guest-image.cfg"'
# Debian 13, as Debian's own cloud images: netplan renders the network for systemd-networkd. Its fallback is DHCPv4
# only: cloud-init 25.1's own fallback also asks for DHCPv6, which nothing on the guest network answers.
NETPLAN_HOOK = (
    "printf 'system_info:\\n  network:\\n    renderers: [netplan]\\n    activators: [netplan]\\n"
    'network:\\n  version: 2\\n  ethernets:\\n    primary:\\n      match: {name: "e*"}\\n      dhcp4: true\\n'
    '      dhcp6: false\\n\' >"$1/etc/cloud/cloud.cfg.d/91-guest-network.cfg" '
    '&& chroot "$1" systemctl enable systemd-networkd >/dev/null 2>&1'
)


@dataclass(frozen=True)
class Recipe:
    """What one guest image is made of; `key` is the hash of all of it."""

    name: str  # debian-12, debian-13
    suite: str  # bookworm, trixie
    kind: str  # container or vm
    packages: tuple[str, ...]
    hooks: tuple[str, ...] = field(default=())
    disk_mib: int = 1536  # vm: size of disk.img (sparse)

    @property
    def key(self) -> str:
        text = json.dumps({"revision": BUILD_REVISION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.kind}-{self.key}"


def recipe(name: str, kind: str) -> Recipe:
    """The recipe of a known image (debian-12, debian-13) for a backend kind (container, vm)."""
    suites = {
        "debian-12": ("bookworm", ("ifupdown", "isc-dhcp-client"), ()),
        "debian-13": ("trixie", ("netplan.io",), (NETPLAN_HOOK,)),
    }
    if name not in suites:
        raise ValueError(f"no guest image recipe named {name!r} (known: {', '.join(sorted(suites))})")
    if kind not in ("container", "vm"):
        raise ValueError(f"guest kind must be container or vm, not {kind!r}")
    suite, packages, hooks = suites[name]
    extra = VM_PACKAGES if kind == "vm" else ()
    return Recipe(
        name=name,
        suite=suite,
        kind=kind,
        packages=COMMON_PACKAGES + packages + extra,
        hooks=(LOCALE_HOOK, MACHINE_ID_HOOK, HOST_KEYS_HOOK, *hooks),
    )


IMAGE_NAMES = ("debian-12", "debian-13")


@dataclass(frozen=True)
class Image:
    """A built image in the cache."""

    recipe: Recipe
    path: Path

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def disk(self) -> Path:
        return self.path / "disk.img"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"


def cache_dir() -> Path:
    explicit = os.environ.get("PROVISIONER_GUEST_IMAGE_CACHE")
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "proxmox-provisioner" / "guest-images"


def cached(recipe: Recipe, cache: Path | None = None) -> Image | None:
    """The image if it is in the cache and complete, else None."""
    path = (cache or cache_dir()) / recipe.dirname
    return Image(recipe, path) if (path / READY).is_file() else None


Progress = Callable[[str], None]


def ensure(recipe: Recipe, cache: Path | None = None, progress: Progress | None = None) -> Image:
    """The image, built first if the cache does not have it (once, whoever else asks at the same time)."""
    cache = cache or cache_dir()
    found = cached(recipe, cache)
    if found is not None:
        return found
    say = progress or log.info
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".{recipe.dirname}.lock"):
        found = cached(recipe, cache)
        if found is not None:
            return found
        say(f"building guest image {recipe.name} ({recipe.kind}, Debian {recipe.suite}) once; about a minute")
        started = time.monotonic()
        final = cache / recipe.dirname
        work = cache / f".{recipe.dirname}.building"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            _build(recipe, work, say)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        say(f"guest image {recipe.name} ({recipe.kind}) ready in {time.monotonic() - started:.0f} s: {final}")
        return Image(recipe, final)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ImageBuildError(RuntimeError):
    pass


def _build(recipe: Recipe, work: Path, say: Progress) -> None:
    rootfs = work / "rootfs"
    command = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        '--aptopt=APT::Install-Recommends "false"',
        f"--include={','.join(recipe.packages)}",
        *(f"--customize-hook={hook}" for hook in recipe.hooks),
        recipe.suite,
        str(rootfs),
    ]
    mirror = debian_mirror()
    if mirror:
        command.append(mirror)
    say(f"  mmdebstrap {recipe.suite} with {len(recipe.packages)} packages")
    _run(command, work / "build.log")
    if recipe.kind == "vm":
        shutil.copyfile(rootfs / "vmlinuz", work / "vmlinuz")
        shutil.copyfile(rootfs / "initrd.img", work / "initrd.img")
        say(f"  mkfs.ext4 {recipe.disk_mib} MiB")
        _run(
            ["mkfs.ext4", "-q", "-L", "root", "-d", str(rootfs), str(work / "disk.img"), f"{recipe.disk_mib}M"],
            work / "build.log",
        )
        shutil.rmtree(rootfs)
    (work / READY).write_text(json.dumps({"key": recipe.key, **asdict(recipe)}, indent=1) + "\n")


def _run(command: list[str], logfile: Path) -> None:
    with open(logfile, "a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S, check=False)
    if result.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        raise ImageBuildError(f"{command[0]} failed with exit code {result.returncode}:\n" + "\n".join(tail))


def debian_mirror() -> str | None:
    """The Debian mirror apt uses on this machine (deb822 or one-line sources), or None for mmdebstrap's default."""
    explicit = os.environ.get("PROVISIONER_DEBIAN_MIRROR")
    if explicit:
        return explicit
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    sources = Path("/etc/apt/sources.list")
    if sources.is_file():
        for line in sources.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m simulator.guests.images [--kind container|vm|all] [NAME ...]`: build what the cache lacks."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m simulator.guests.images", description=main.__doc__)
    parser.add_argument("names", nargs="*", default=list(IMAGE_NAMES))
    parser.add_argument("--kind", choices=("container", "vm", "all"), default="all")
    args = parser.parse_args(argv)
    kinds = ("container", "vm") if args.kind == "all" else (args.kind,)
    for name in args.names:
        for kind in kinds:
            image = ensure(recipe(name, kind), progress=lambda line: print(line, flush=True))  # noqa: T201
            print(f"{name} {kind}: {image.path}", flush=True)  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
