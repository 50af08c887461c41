"""Before a model server loads an adapter (or a new model version), ask the Aegis sidecar
whether the directory is the one signed with the Transit key; refuse to load otherwise.

Over TCP: AEGIS_ADDR=http://127.0.0.1:8200. Over the sidecar's Unix socket
(AEGIS_LISTEN_UNIX): AEGIS_ADDR=unix:///run/aegis/aegis.sock. Standard library only.

    python verify_before_load.py --key model-signing --signature /models/lora.sig /models/lora
Exit 0: load it. Exit 1: do not.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def connection(addr: str, timeout: float) -> http.client.HTTPConnection:
    if addr.startswith("unix://"):
        return UnixConnection(addr[len("unix://"):], timeout)
    host = addr.removeprefix("http://")
    return http.client.HTTPConnection(host, timeout=timeout)


def verify(addr: str, model: str, signature: str, key: str, timeout: float = 600) -> dict:
    """The sidecar's answer's `data`; raises on a refusal (4xx/5xx)."""
    body = json.dumps({"model": model, "signature": signature, "key": key})
    headers = {"Content-Type": "application/json", "X-Vault-Request": "true"}
    token_file = os.environ.get("AEGIS_TOKEN_FILE")
    if token_file:
        with open(token_file) as f:
            headers["X-Vault-Token"] = f.read().strip()
    conn = connection(addr, timeout)
    try:
        conn.request("POST", "/v1/aegis/model/verify", body=body, headers=headers)
        resp = conn.getresponse()
        answer = json.loads(resp.read() or b"{}")
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"the sidecar refused ({resp.status}): {'; '.join(answer.get('errors', []))}")
    return answer["data"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--key", required=True)
    p.add_argument("--signature", required=True)
    p.add_argument("model")
    args = p.parse_args()
    addr = os.environ.get("AEGIS_ADDR", "http://127.0.0.1:8200")
    try:
        data = verify(addr, os.path.abspath(args.model), os.path.abspath(args.signature), args.key)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"not loading {args.model}: {e}", file=sys.stderr)
        return 1
    if not data.get("valid"):
        print(
            f"not loading {args.model}: {data.get('error', data.get('reason'))} "
            f"(changed {data.get('changed')}, added {data.get('added')}, missing {data.get('missing')})",
            file=sys.stderr,
        )
        return 1
    print(f"{args.model}: valid, signed by {args.key} version {data['key_version']} ({data['files']} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
