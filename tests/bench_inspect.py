"""Inspection benchmark: ``hosts.inspect`` (SSH) over 50 real sshd hosts beside ``ansible -m setup``.

Fifty ``/usr/sbin/sshd`` processes listen on 127.0.1.1-50 (tests/sshdtools.py), all accepting one
unencrypted ed25519 key of the test account. Each tool runs as its own process, five times:

* ksocket: one ``hosts.inspect`` per host, all at once on one event loop (``--protocols ssh``,
  the default 2 connections per host), with one credential file per host (its address, port and
  that key: 50 files, so each host's search also reads the 49 that do not match it);
* Ansible: ``ansible all -m setup -f 50`` over the same hosts, user and key (host key checking
  off, its default SSH multiplexing, a fresh ControlPath folder per run so no run inherits the
  previous one's connections), and once more with ``pipelining`` on, its fastest setting.

Reported per tool: the median, min and max wall time (process start to exit), the peak RSS of the
client's process tree (sampled from /proc every 50 ms: the tool and all its children, not the
sshd side), and the client's CPU time. The goal: ksocket's median at most a third of Ansible's.

``python -m tests.bench inspect`` (``inv bench --only inspect``) runs it; it needs root (sshd, a
test account) and ansible-core in the virtualenv (``pip install ansible-core``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests import sshdtools

HOSTS = 50
RUNS = int(os.environ.get("KSOCKET_BENCH_RUNS", "5"))  # fewer for a quick look
SAMPLE_SECONDS = 0.05
GOAL = 1 / 3
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- measuring ---------------------------------------------------------------------------------


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and every descendant (from /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        rss[pid] = int(fields[21]) * PAGE
    total = 0
    for pid, size in rss.items():
        current = pid
        for _ in range(64):
            if current == root:
                total += size
                break
            current = parents.get(current, 0)
            if current <= 1:
                break
    return total


class Run:
    """One command: wall time, peak RSS of its process tree, CPU time of it and its waited children."""

    def __init__(self, command: list[str], env: dict[str, str], output: Path) -> None:
        self.command = command
        self.env = env
        self.output = output
        self.wall = 0.0
        self.peak = 0
        self.cpu = 0.0
        self.status = 0

    def execute(self) -> Run:
        done = threading.Event()
        with self.output.open("wb") as out:
            started = time.perf_counter()
            process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env)

            def sample() -> None:
                while not done.is_set():
                    self.peak = max(self.peak, _tree_rss(process.pid))
                    done.wait(SAMPLE_SECONDS)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            _, status, usage = os.wait4(process.pid, 0)
            self.wall = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
            done.set()
            sampler.join()
        self.status = process.returncode
        self.cpu = usage.ru_utime + usage.ru_stime
        return self


# --- the ksocket side (run in its own process) -------------------------------------------------


def ksocket_main(spec_path: str) -> int:
    """``python -m tests.bench_inspect --ksocket SPEC``: inspect every host of SPEC at once."""
    from ksocket.collectors.base import Environment
    from ksocket.collectors.inspect import hosts
    from ksocket.collectors.inspect.hostkeys import HostKeyStore
    from ksocket.collectors.inspect.limiter import HostLimiter

    spec = json.loads(Path(spec_path).read_text())
    store = HostKeyStore(Path(spec["known_hosts"]))
    inspection = hosts.HostInspection(Environment(Path(spec["credentials"]), HostLimiter(), store))

    async def everything() -> list[dict[str, Any]]:
        return await asyncio.gather(*(inspection.inspect_host(address, ["ssh"]) for address in spec["addresses"]))

    results = asyncio.run(everything())
    failed = [r["address"] for r in results if "error" in r["ssh"]]
    packages = sum(len(r["ssh"].get("packages", [])) for r in results)
    print(json.dumps({"hosts": len(results), "failed": failed, "packages": packages}))
    if failed:
        print(json.dumps(results[0]["ssh"] if "error" in results[0]["ssh"] else {}, indent=1)[:2000])
    return 1 if failed else 0


# --- the benchmark -----------------------------------------------------------------------------


def _ansible_env(folder: Path, run: int, *, pipelining: bool) -> dict[str, str]:
    config = folder / "ansible.cfg"
    config.write_text("[defaults]\n")
    return {
        **os.environ,
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_HOME": str(folder / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(folder / "ansible-tmp"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_SSH_EXTRA_ARGS": f"-o UserKnownHostsFile={folder / 'ansible_known_hosts'}",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(folder / f"cp-{'p' if pipelining else 'd'}{run}"),
        "ANSIBLE_PIPELINING": "True" if pipelining else "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
    }


def _close_masters(control_dir: Path) -> None:
    """Ends the SSH ControlPersist masters a run left behind (by their sockets, not by name)."""
    if not control_dir.is_dir():
        return
    for socket_path in control_dir.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "placeholder"],
            capture_output=True,
            check=False,
            timeout=10,
        )


def _row(name: str, runs: list[Run]) -> tuple[str, float, float, float, int, float]:
    walls = [run.wall for run in runs]
    return (
        name,
        statistics.median(walls),
        min(walls),
        max(walls),
        max(run.peak for run in runs),
        statistics.median(run.cpu for run in runs),
    )


def main() -> int:
    reason = sshdtools.available()
    ansible = Path(sys.executable).with_name("ansible")
    if reason is None and not ansible.exists():
        reason = f"{ansible} is missing: pip install ansible-core into the virtualenv"
    if reason is not None:
        print(f"\ninspect benchmark skipped: {reason}")
        return 0
    sshdtools.ensure_user()
    folder = sshdtools.workdir("ksocket-bench-")
    try:
        key = sshdtools.make_key(folder / "id_ed25519")
        with sshdtools.sshd_farm(HOSTS, folder, authorized_keys=[sshdtools.public_key(key)]) as servers:
            return _measure(folder, key, servers, ansible)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _measure(folder: Path, key: Path, servers: list[sshdtools.Sshd], ansible: Path) -> int:
    addresses = [server.address for server in servers]
    credentials = folder / "credentials"
    # a file per host, named after its address, with that host's port
    for server in servers:
        sshdtools.credential_file(
            credentials, f"{server.address}.toml", [server.address], port=server.port, keys=[(key, "")]
        )
    spec = folder / "spec.json"
    spec.write_text(
        json.dumps(
            {"credentials": str(credentials), "known_hosts": str(folder / "known_hosts"), "addresses": addresses}
        )
    )
    inventory = folder / "inventory.ini"
    inventory.write_text(
        "[all]\n"
        + "".join(
            f"{s.address} ansible_port={s.port} ansible_user={sshdtools.USER} ansible_ssh_private_key_file={key}\n"
            for s in servers
        )
    )
    ksocket_command = [sys.executable, "-m", "tests.bench_inspect", "--ksocket", str(spec)]
    ksocket_env = {**os.environ, "KSOCKET_HOME": str(folder / "home")}
    runs: dict[str, list[Run]] = {"ksocket": [], "ansible": [], "ansible-pipelining": []}
    for number in range(RUNS):
        run = Run(ksocket_command, ksocket_env, folder / f"ksocket-{number}.out").execute()
        if run.status != 0:
            print(f"ksocket run failed:\n{run.output.read_text()[:3000]}")
            return 1
        runs["ksocket"].append(run)
        for name, pipelining in (("ansible", False), ("ansible-pipelining", True)):
            env = _ansible_env(folder, number, pipelining=pipelining)
            command = [str(ansible), "all", "-i", str(inventory), "-m", "setup", "-f", str(HOSTS), "--one-line"]
            run = Run(command, env, folder / f"{name}-{number}.out").execute()
            _close_masters(Path(env["ANSIBLE_SSH_CONTROL_PATH_DIR"]))
            succeeded = run.output.read_text(errors="replace").count(" | SUCCESS")
            if succeeded != HOSTS:
                print(f"{name} run: {succeeded}/{HOSTS} hosts succeeded:\n{run.output.read_text()[-3000:]}")
                return 1
            runs[name].append(run)
    first = json.loads(runs["ksocket"][0].output.read_text().splitlines()[0])
    rows = [
        _row("ksocket hosts.inspect (ssh)", runs["ksocket"]),
        _row("ansible -m setup -f 50", runs["ansible"]),
        _row("ansible -m setup -f 50, pipelining", runs["ansible-pipelining"]),
    ]
    print(
        f"\nInspection of {HOSTS} sshd hosts on loopback (key login), {RUNS} runs each;"
        f" ksocket collected {first['packages']} packages in all"
    )
    print(f"{'tool':40} {'median s':>9} {'min s':>7} {'max s':>7} {'peak RSS MiB':>13} {'CPU s':>7}")
    for name, median, low, high, peak, cpu in rows:
        print(f"{name:40} {median:9.2f} {low:7.2f} {high:7.2f} {peak / 2**20:13.0f} {cpu:7.2f}")
    ratio = rows[0][1] / rows[1][1]
    print(f"{'ratio ksocket / ansible (goal <= 0.33)':40} {ratio:9.3f}")
    print(f"{'ratio ksocket / ansible with pipelining':40} {rows[0][1] / rows[2][1]:9.3f}")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ksocket":
        raise SystemExit(ksocket_main(sys.argv[2]))
    raise SystemExit(main())
