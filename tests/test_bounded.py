"""ksocket.bounded: reading what an operator hands in within bounds (files, JSON on the command line)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import sys
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from ksocket import bounded, cli
from ksocket.nesting import deep_parse


def refused(message: str) -> ValueError:
    return ValueError(message)


def test_a_private_file_is_read_and_one_open_to_others_is_not(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_bytes(b"a = 1\n")
    path.chmod(0o600)
    assert bounded.read_file(path, refused, private=True) == b"a = 1\n"
    path.chmod(0o640)
    assert bounded.read_file(path, refused) == b"a = 1\n"  # only a secret must be private
    with pytest.raises(ValueError, match=f"open to others \\(mode 0640\\): run chmod 600 {path}$"):
        bounded.read_file(path, refused, private=True)


def test_a_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * bounded.MAX_FILE_SIZE)
    assert len(bounded.read_file(path, refused)) == bounded.MAX_FILE_SIZE
    path.write_bytes(b"x" * (bounded.MAX_FILE_SIZE + 1))
    with pytest.raises(ValueError, match="larger than"):
        bounded.read_file(path, refused)


@pytest.mark.timeout(30)
def test_fifos_devices_folders_and_missing_files_are_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, problem in [
        (fifo, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),
        (tmp_path, "cannot read: Is a directory"),
        (tmp_path / "missing", "cannot read: No such file or directory"),
    ]:
        with pytest.raises(ValueError) as caught:
            bounded.read_file(path, refused)
        assert str(caught.value) == f"{path}: {problem}"


def test_depth_is_counted_without_recursion() -> None:
    assert not bounded.depth_exceeds({"a": [{"b": 1}]}, limit=3)
    assert bounded.depth_exceeds({"a": [{"b": [1]}]}, limit=3)
    assert not bounded.depth_exceeds({"a": [{"b": []}]}, limit=3)  # an empty list holds nothing deeper
    deep: object = 1
    for _ in range(100_000):
        deep = [deep]
    assert bounded.depth_exceeds(deep)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[" * 100_000 + "]" * 100_000, "--params is nested more than 64 levels deep"),
        ('{"a":' * 65 + "1" + "}" * 65, "--params is nested more than 64 levels deep"),
        ("[1]", "--params must be a JSON object"),
        ("{", "--params is not JSON: Expecting property name enclosed in double quotes at column 2"),
        ('{"a": ' + "9" * 5000 + "}", "--params is not JSON: a number is too long"),
    ],
)
def test_hub_run_params_are_one_line(text: str, problem: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        bounded.json_object(text, "--params", argparse.ArgumentTypeError)
    assert str(caught.value) == problem
    assert bounded.json_object('{"a":' * 63 + "1" + "}" * 63, "--params", ValueError)


def test_hub_run_refuses_deep_params_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["hub", "run", "s1", "x", "--params", "[" * 100_000 + "]" * 100_000, "--db", str(tmp_path / "h.db")])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--params is nested more than 64 levels deep" in err and "Traceback" not in err


def _finalizer_runs_after_a_deep_parse(guard: Callable[[], AbstractContextManager[None]]) -> list[int]:
    """A garbage cycle with a finalizer that needs a few frames, then a hostile document nested past the recursion
    limit parsed under ``guard``, with the next collection due when the parser is a few levels from that limit
    (it makes a list per level); what the finalizer managed (empty: it failed)."""
    ran: list[int] = []

    def needs_frames(depth: int) -> int:
        return depth if depth == 0 else needs_frames(depth - 1) + 1

    class Cycle:
        me: object

    frames = len(inspect.stack(0))
    gc.collect()
    cycle = Cycle()
    cycle.me = cycle
    weakref.finalize(cycle, lambda: ran.append(needs_frames(50)))
    del cycle
    threshold = gc.get_threshold()
    gc.set_threshold(sys.getrecursionlimit() - frames - 20)
    try:
        with contextlib.suppress(RecursionError), guard():
            json.loads("[" * 100_000 + "]" * 100_000)
    finally:
        gc.set_threshold(*threshold)
    gc.collect()
    return ran


def test_no_collection_runs_finalizers_at_the_depth_of_a_hostile_document() -> None:
    assert _finalizer_runs_after_a_deep_parse(deep_parse) == [50]
    assert gc.isenabled()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the failure it shows
def test_without_the_guard_the_finalizer_fails_at_that_depth() -> None:
    """What the guard is for: the same parse unguarded runs the finalizer deep in the parser, where it fails."""
    assert _finalizer_runs_after_a_deep_parse(contextlib.nullcontext) == []
