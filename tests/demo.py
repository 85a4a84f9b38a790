"""The main job of ``./dev install`` (``inv demo``): a hub and an agent on loopback, one operation through them.

It uses only the commands a person would type: ``ksocket hub token add``, ``ksocket hub serve``,
``ksocket config``, ``ksocket connect`` and ``ksocket hub run --wait``, in a throw-away KSOCKET_HOME.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def ksocket(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ksocket", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"ksocket {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ksocket-demo-") as folder:
        env = {**os.environ, "KSOCKET_HOME": folder}
        port = free_port()
        token = ksocket(env, "hub", "token", "add", "demo")
        for name, value in [
            ("connect.host", "127.0.0.1"),
            ("connect.port", str(port)),
            ("connect.protocol", "ws"),
            ("connect.token", token),
            ("logfile", str(Path(folder) / "agent.log")),
        ]:
            ksocket(env, "config", name, value)
        hub_log = (Path(folder) / "hub.log").open("w")
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "ksocket", "hub", "serve", "--listen", f"127.0.0.1:{port}"],
                env=env,
                stdout=hub_log,
                stderr=subprocess.STDOUT,
            ),
        ]
        try:
            time.sleep(1.0)
            processes.append(subprocess.Popen([sys.executable, "-m", "ksocket", "connect"], env=env))
            print("$ ksocket hub run demo system.info --wait")
            print(ksocket(env, "hub", "run", "demo", "system.info", "--wait", "--timeout", "30"))
            print("$ ksocket hub agents")
            print(ksocket(env, "hub", "agents"))
        finally:
            for process in reversed(processes):
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
            hub_log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
