"""A stand-in for a user's server, started by a command target in the tests.

    python tiny_target.py PORT STATE_DIR

Serves HTTP on 127.0.0.1:PORT (GET and POST answer 200 with ``{}``), prints a few log lines, writes
``STATE_DIR/up.json`` with its pid, its process group and the pid of a helper child that ignores
SIGTERM (so only a SIGKILL of the group stops it), plus the value of the FLAG_A variable it got.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    port, state = int(sys.argv[1]), Path(sys.argv[2])
    helper = subprocess.Popen([sys.executable, "-c",
                               "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "time.sleep(600)"])
    for n in range(30):
        print(f"tiny target log line {n}", flush=True)
    print(f"secret seen: {os.environ.get('TINY_SECRET', '')}", flush=True)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    info = {"pid": os.getpid(), "pgid": os.getpgid(0), "helper": helper.pid,
            "flag_a": os.environ.get("FLAG_A"), "target_dir": os.environ.get("CONTEND_TARGET_DIR")}
    tmp = state / "up.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(state / "up.json")
    server.serve_forever()


if __name__ == "__main__":
    main()
