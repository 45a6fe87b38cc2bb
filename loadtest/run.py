"""``make loadtest``: start the local stack, run locust headless for a bounded
time against it, write locust's CSV and HTML report under ``loadtest/reports/``,
stop the stack. Exits non-zero if any valid request got a non-2xx.

    python -m loadtest.run [--users 50] [--spawn-rate 10] [--run-time 30s] [--user-class MixUser]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str, deadline_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the local stack exited early (code {proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling interval, not synchronisation
    raise SystemExit(f"the local stack was not ready at {url} within {deadline_s:.0f}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--spawn-rate", type=float, default=10)
    ap.add_argument("--run-time", default="30s", help="bounded run time, e.g. 30s, 2m")
    ap.add_argument("--user-class", default="MixUser")
    ap.add_argument("--host", help="use an already running collector (loopback only) instead of starting one")
    args = ap.parse_args(argv)

    reports = HERE / "reports"
    reports.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bindir = Path(sys.executable).parent
    dev: subprocess.Popen[bytes] | None = None
    data_dir = tempfile.mkdtemp(prefix="oceanus-loadtest-")
    host = args.host
    try:
        if host is None:
            port = _free_port()
            dev = subprocess.Popen(
                [str(bindir / "oceanus"), "dev", "--data-dir", data_dir, "--port", str(port)], stdout=subprocess.DEVNULL
            )
            host = f"http://127.0.0.1:{port}"
            _ready(f"{host}/readyz", 60, dev)
        cmd = [
            str(bindir / "locust"),
            "-f",
            str(HERE / "locustfile.py"),
            "--headless",
            "-H",
            host,
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            "-t",
            args.run_time,
            "--stop-timeout",
            "5",
            "--csv",
            str(reports / f"{stamp}-{args.user_class}"),
            "--html",
            str(reports / f"{stamp}-{args.user_class}.html"),
            "--only-summary",
            args.user_class,
        ]
        code = subprocess.call(cmd, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        print(f"report: {reports / f'{stamp}-{args.user_class}.html'}")
        return code
    finally:
        if dev is not None and dev.poll() is None:
            dev.send_signal(signal.SIGINT)
            try:
                dev.wait(timeout=60)
            except subprocess.TimeoutExpired:
                dev.kill()


if __name__ == "__main__":
    sys.exit(main())
