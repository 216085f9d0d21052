"""Maintenance flows: the nightly leaderboard rebuild."""

from __future__ import annotations

from prefect import flow

from tunix_rt.tasks.maintenance import list_boards, rebuild_board


@flow(name="rebuild-leaderboards")
def rebuild_leaderboards(dataset: str | None = None) -> int:
    """Rebuild every leaderboard (or one dataset's) from the stored evaluations.

    Args:
        dataset: Only this dataset's boards; all of them when empty.
    """
    boards = list_boards(dataset)
    for ds, judge in boards:
        rebuild_board(ds, judge)
    return len(boards)
