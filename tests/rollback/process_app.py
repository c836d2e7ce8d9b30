"""A tiny application for the process backend's tests, run as a real process:

    python process_app.py RELEASE PORT INFO_FILE

Releases ``v1`` and ``v2`` serve ``GET /`` with their release name on 127.0.0.1:PORT and exit 0
on SIGTERM. ``crash`` prints a traceback-like line and exits 3 before it listens. ``forks``
serves like v1 and starts a child in its process group (its pid in INFO_FILE as ``child``).
``stubborn`` serves like v1 but ignores SIGTERM. INFO_FILE receives a JSON object with the pid,
the child's pid, the environment and the argv.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path


def main() -> int:
    release, port, info_file = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    print(f"process_app {release} starting, secret is {os.environ.get('APP_SECRET')}", flush=True)
    if release == "crash":
        print("Traceback (most recent call last): StartupCrashError: boom", flush=True)
        return 3
    child = None
    if release == "forks":
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"], stdin=subprocess.DEVNULL
        )
    info = {
        "pid": os.getpid(),
        "child": child.pid if child else None,
        "env": dict(os.environ),
        "argv": sys.argv[1:],
    }
    info_file.write_text(json.dumps(info), encoding="utf-8")
    stop = threading.Event()
    if release == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = release.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"process_app {release} listening on {port}", flush=True)
    stop.wait()
    server.shutdown()
    return 0  # a child is left alone: the backend's signal to the group reaches it


if __name__ == "__main__":
    sys.exit(main())
