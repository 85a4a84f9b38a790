"""Developer commands (invoke): ``inv check``, ``inv test``, ``inv lab.up``, ``inv bench`` …

Invoke registers this file as the module ``tasks``, which hides the project's ``tasks/`` package:
nothing here imports ``tasks``, ``ksocket`` or ``statemachine``; everything runs in subprocesses.
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Collection, Context, task

ROOT = Path(__file__).resolve().parent
PY = sys.executable
PACKAGES = "ksocket statemachine tasks"


@task
def check(c: Context) -> None:
    """ruff (lint, then format), then mypy --strict on the three packages."""
    with c.cd(str(ROOT)):
        c.run(f"{PY} -m ruff check .", pty=False)
        c.run(f"{PY} -m ruff format --check .", pty=False)
        c.run(f"{PY} -m mypy --strict {PACKAGES}", pty=False)


@task(
    help={
        "k": "only tests matching this expression",
        "fast": "the unit tier alone: no root, no server, no Redis, under a minute",
        "args": "more pytest arguments",
    }
)
def test(c: Context, k: str = "", fast: bool = False, args: str = "") -> None:
    """The whole test suite (the lab's namespaces are built and removed by the tests' fixtures)."""
    select = f"-k '{k}'" if k else ""
    tier = "-m unit" if fast else ""
    with c.cd(str(ROOT)):
        c.run(f"{PY} -m pytest {tier} {select} {args}", pty=False)


@task
def demo(c: Context) -> None:
    """The main job that ``./dev install`` ends with: a discovery that learns a routed lab, a scan of a small
    lab, then one operation via a hub."""
    with c.cd(str(ROOT)):
        c.run(f"{PY} -m tests.discoverylab demo", pty=False)
        c.run(f"{PY} -m tests.lab demo", pty=False)
        c.run(f"{PY} -m tests.demo", pty=False)


@task(help={"only": "comma-separated benchmark names (link, pipeline, discovery, discover, inspect, hostile, hub)"})
def bench(c: Context, only: str = "") -> None:
    """Benchmarks against the reference tools; each prints its table."""
    with c.cd(str(ROOT)):
        c.run(f"{PY} -m tests.bench {only.replace(',', ' ')}", pty=False)


@task(name="up", help={"discovery": "the discovery loop's routed topology (tests/discoverylab.py) instead"})
def lab_up(c: Context, discovery: bool = False) -> None:
    """Build the network lab (namespaces in 198.18.0.0/15)."""
    with c.cd(str(ROOT)):
        c.run(f"{PY} -m {'tests.discoverylab' if discovery else 'tests.lab'} up", pty=False)


@task(name="down", help={"all": "also the labs of test runs still running (they will fail)"})
def lab_down(c: Context, all: bool = False) -> None:  # `all`: the flag's name on the command line
    """Remove the labs of lab.up and of test runs that are gone (--all: running test runs' too)."""
    with c.cd(str(ROOT)):
        c.run(f"{PY} -m tests.lab down{' --all' if all else ''}", pty=False)


@task(help={"out": "the folder to write the tarball to (default dist)"})
def release(c: Context, out: str = "dist") -> None:
    """The release: dist/ksocket-VERSION-linux-x86_64.tar.gz, ksocket frozen with its own runtime, the installers."""
    with c.cd(str(ROOT)):
        c.run(f"{PY} installers/release.py --out {out}", pty=False)


namespace = Collection(check, test, demo, bench, release, Collection("lab", lab_up, lab_down))
