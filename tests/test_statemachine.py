"""The connection state machine's table and timing policy, without any socket."""

from __future__ import annotations

import pytest

from statemachine import table
from statemachine.policy import resume_delay


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (7, 64.0), (8, 120.0), (10, 120.0), (500, 120.0)],
)
def test_resume_delay_with_the_manual_defaults(attempt: int, expected: float) -> None:
    assert resume_delay(attempt, plateau=10, threshold=120.0, factor=1.0) == expected


def test_resume_delay_plateau_and_factor() -> None:
    delays = [resume_delay(k, plateau=3, threshold=120.0, factor=0.5) for k in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="attempts count from 1"):
        resume_delay(0, plateau=3, threshold=1.0, factor=1.0)


def test_table_fits_on_one_screen_and_names_every_state() -> None:
    text = table.describe()
    assert len(text.splitlines()) <= 24
    for state in table.STATES:
        assert state in text
    assert "retries_exhausted" in text
    reachable = {row["dest"] for row in table.TRANSITIONS}
    assert reachable == set(table.STATES) - {"idle"}


def test_only_a_failed_attempt_counts_towards_resume_retries() -> None:
    lost = [row for row in table.TRANSITIONS if row["trigger"] == "lost"]
    counting = [row for row in lost if row.get("prepare") == "count_failure"]
    assert counting and all("connected" not in row["source"] for row in counting)
    assert "lost       connected        resuming\n" in table.describe()  # no guard: it always resumes
