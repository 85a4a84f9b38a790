"""SIGKILL of the agent in the middle of a discovery, then a restart: the loop goes on from its state in Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipelinetools import ROOT, embedded_url, kill_embedded, python_env, read_lines_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def start(url: str, folder: Path, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.discoveragent", url, str(folder), *options],
        cwd=ROOT,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_an_agent_killed_mid_discovery_is_followed_by_one_that_finishes_it_from_where_it_was(tmp_path: Path) -> None:
    url = embedded_url(tmp_path)
    world = tmp_path / "world.log"
    first = start(url, tmp_path, "--submit", "walk", "--block", "198.18.1.2")
    try:
        assert "accepted walk" in read_lines_until(first, "ready", timeout=30)
        deadline = time.monotonic() + 30
        while "inspect 198.18.1.2" not in lines(world):  # round 1's learn of the far router hangs
            assert time.monotonic() < deadline, lines(world)
            time.sleep(0.05)
        first.kill()  # SIGKILL, mid-discovery
        first.wait(10)
        before = lines(world)
        second = start(url, tmp_path)
        try:
            found = read_lines_until(second, "result walk", timeout=60)
        finally:
            second.kill()
            second.wait(10)
    finally:
        first.kill()
        kill_embedded(tmp_path / "broker.db")
    assert found.count("result walk") == 1
    _, seq, data = next(line for line in found if line.startswith("data ")).split(" ", 2)
    summary = json.loads(data)
    assert summary["hosts"] == 6 and summary["rounds"] == 3
    after = lines(world)[len(before) :]
    sweeps = [line for line in lines(world) if line.startswith("sweep ")]
    assert len(sweeps) == 3  # rounds 0 and 1 were not swept again: the state was resumed
    assert not [line for line in after if line.startswith("sweep ") and "198.18.1." in line]
    inspected = [line.split()[1] for line in lines(world) if line.startswith("inspect ")]
    assert sorted(set(inspected)) == ["198.18.0.2", "198.18.0.6", "198.18.1.1", "198.18.1.2", "198.18.2.1"]
    assert [address for address in inspected if inspected.count(address) > 1] == ["198.18.1.2", "198.18.1.2"]
    records = [line.split(" ", 3) for line in found if line.startswith("record walk ")]
    seqs = [int(seq) for _, _, seq, _ in records]
    assert seqs == sorted(set(seqs)) and seqs[-1] < int(seq)  # in order, before the result
    documents = [json.loads(document) for *_, document in records]
    versions = [(document["key"], document.get("version", 1)) for document in documents]
    assert len(versions) == len(set(versions)), versions  # each record once, though round 1's learn ran twice
    keys = [(document["kind"], document.get("address") or document.get("network")) for document in documents]
    keys = [key for key, document in zip(keys, documents, strict=True) if document.get("version", 1) == 1]
    assert sorted(address for kind, address in keys if kind == "host") == sorted(
        ("198.18.0.2", "198.18.0.6", "198.18.1.1", "198.18.1.2", "198.18.2.1", "198.18.0.5")
    )
    assert sorted(address for kind, address in keys if kind == "details") == ["198.18.0.6", "198.18.1.2"]
