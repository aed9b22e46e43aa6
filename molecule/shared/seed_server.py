"""The Molecule scenarios' NoCloud seed server: the documents engine.cloudinit renders, served per token.

The service serves seeds from its database (api/seed.py). Here a seed is the file `<state-dir>/seeds/<token>.json`
holding the SeedContext fields (instance_id, hostname, user, ssh_keys, metadata, boot_command) and, optionally,
seed_url: the URL the VM reads this seed from (its proxmox_vm_cloud_init_seed_url; for real guests an address on their
network that the simulator forwards here), written by a scenario's prepare step. phone_home posts to
`<seed_url>phone-home`, this server's own `<url><token>/phone-home` when there is no seed_url. Guests (the simulator's
boot sidecar) GET `<url><token>/{meta-data,user-data,vendor-data,network-config}` and POST `<url><token>/phone-home`;
the last phone-home of a token is kept as `<state-dir>/phone-home/<token>.json` ({"count": n, "fields": {...}}), so a
scenario can check that the guest's cloud-init applied the seed. An unknown token answers 404, like the service.

python molecule/shared/seed_server.py --state-dir DIR [--host 127.0.0.1] [--port 0]

Prints `url: http://<host>:<port>/seed/` once it listens, serves until SIGTERM or SIGINT. Tokens never reach the log.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

from common.files import write_private
from engine import cloudinit

PATH = re.compile(r"^/seed/(?P<token>[A-Za-z0-9_-]{20,128})/(?P<document>[a-z-]+)$")
RENDERERS = {
    "meta-data": cloudinit.meta_data,
    "user-data": cloudinit.user_data,
    "vendor-data": cloudinit.vendor_data,
}
TOKEN_TEXT = re.compile(r"/[A-Za-z0-9_-]{20,128}/")
MAX_FORM_BYTES = 64 * 1024


class SeedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state_dir: Path) -> None:
        super().__init__(address, SeedHandler)
        self.state_dir = state_dir
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/seed/"

    def context(self, token: str) -> cloudinit.SeedContext | None:
        try:
            fields = json.loads((self.state_dir / "seeds" / f"{token}.json").read_text())
        except FileNotFoundError:
            return None
        seed_url = fields.get("seed_url") or f"{self.base_url}{token}/"
        return cloudinit.SeedContext(
            instance_id=str(fields["instance_id"]),
            hostname=str(fields["hostname"]),
            user=str(fields["user"]),
            ssh_keys=[str(key) for key in fields.get("ssh_keys", [])],
            metadata=dict(fields.get("metadata", {})),
            boot_command=fields.get("boot_command"),
            phone_home_url=f"{seed_url}phone-home",
        )

    def record_phone_home(self, token: str, fields: dict[str, str]) -> None:
        record = self.state_dir / "phone-home" / f"{token}.json"
        with self.lock:
            record.parent.mkdir(mode=0o700, exist_ok=True)
            count = json.loads(record.read_text())["count"] if record.exists() else 0
            write_private(record, json.dumps({"count": count + 1, "fields": fields}, indent=2) + "\n")


class SeedHandler(BaseHTTPRequestHandler):
    server: SeedServer
    server_version = "molecule-seed"

    def do_GET(self) -> None:
        found = PATH.match(self.path)
        context = self.server.context(found["token"]) if found else None
        if found is None or context is None:
            self._answer(HTTPStatus.NOT_FOUND, "no such seed\n")
        elif found["document"] == "network-config":
            self._answer(HTTPStatus.OK, cloudinit.network_config())
        elif found["document"] in RENDERERS:
            self._answer(HTTPStatus.OK, RENDERERS[found["document"]](context))
        else:
            self._answer(HTTPStatus.NOT_FOUND, "no such document\n")

    def do_POST(self) -> None:
        found = PATH.match(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_FORM_BYTES)).decode(errors="replace")
        if found is None or found["document"] != "phone-home" or self.server.context(found["token"]) is None:
            self._answer(HTTPStatus.NOT_FOUND, "no such seed\n")
            return
        self.server.record_phone_home(found["token"], dict(parse_qsl(body)))
        self._answer(HTTPStatus.OK, '{"status": "recorded"}\n', "application/json")

    def _answer(self, status: HTTPStatus, text: str, media_type: str = "text/plain; charset=utf-8") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        found = PATH.match(self.path)
        what = f"<token>/{found['document']}" if found else "(another path)"
        sys.stderr.write(f"{self.command} {what} {int(code) if isinstance(code, int) else code}\n")

    def log_error(self, format: str, *args: object) -> None:
        sys.stderr.write("error: " + TOKEN_TEXT.sub("/<token>/", format % args) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seed_server.py", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--state-dir", type=Path, required=True, help="seeds/<token>.json are read from here")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    args = parser.parse_args(argv)
    (args.state_dir / "seeds").mkdir(mode=0o700, parents=True, exist_ok=True)
    server = SeedServer((args.host, args.port), args.state_dir)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: threading.Thread(target=server.shutdown).start())
    sys.stdout.write(f"seed server ready\nurl: {server.base_url}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
