"""The exception tree drawn in ksocket.errors' docstring is the tree the code defines."""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys

import ksocket
import ksocket.errors
import statemachine
import tasks
from ksocket.errors import KsocketError

_NAME = re.compile(r"^(?P<prefix>[ │├└─]*)(?P<name>[A-Z]\w*)(?:\s{2,}|$)")


def _import_everything() -> None:
    """Every module of the three packages, so that every subclass of KsocketError exists."""
    for package in (ksocket, statemachine, tasks):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)


def _subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


def _drawn_tree(doc: str) -> dict[str, str | None]:
    """Each class name of the tree in ``doc`` and the name it hangs from (None for the root)."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("KsocketError "))
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in lines[start:]:
        if not line.strip():
            break
        match = _NAME.match(line)
        if match is None:
            continue  # a description carried over to the next line
        column, name = len(match["prefix"]), match["name"]
        while stack and stack[-1][0] >= column:
            stack.pop()
        assert name not in parents, f"{name} is drawn twice"
        parents[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return parents


def test_the_tree_parser_reads_nesting_and_skips_continuations() -> None:
    doc = """Intro.

    Root                first
    ├── Child           second
    │   │               a continuation
    │   └── Grandchild  third
    └── Other           fourth
                        (More text)

    After              not part of the tree
    """
    assert _drawn_tree(doc.replace("Root", "KsocketError")) == {
        "KsocketError": None,
        "Child": "KsocketError",
        "Grandchild": "Child",
        "Other": "KsocketError",
    }


def test_every_ksocket_error_has_its_line_under_its_parent() -> None:
    _import_everything()
    assert ksocket.errors.__doc__ is not None
    drawn = _drawn_tree(ksocket.errors.__doc__)
    defined = _subclasses(KsocketError) | {KsocketError}
    missing = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in defined if cls.__name__ not in drawn)
    assert not missing, f"exceptions without a line in ksocket.errors' tree: {missing}"
    assert set(drawn) == {cls.__name__ for cls in defined}, "the tree draws a class that does not exist"
    for cls in defined - {KsocketError}:
        bases = {base.__name__ for base in cls.__bases__ if issubclass(base, KsocketError)}
        assert drawn[cls.__name__] in bases, f"{cls.__name__} is drawn under {drawn[cls.__name__]}, not {bases}"


def test_no_other_module_draws_a_tree_of_errors() -> None:
    _import_everything()
    names = {cls.__name__ for cls in _subclasses(KsocketError)}
    branch = re.compile(r"[├└]── (\w+)")
    drawing = sorted(
        name
        for name, module in sys.modules.items()
        if name.split(".")[0] in ("ksocket", "statemachine", "tasks")
        and module is not ksocket.errors
        and names & set(branch.findall(module.__doc__ or ""))
    )
    assert drawing == [], "these modules draw part of the tree that ksocket.errors draws whole"
