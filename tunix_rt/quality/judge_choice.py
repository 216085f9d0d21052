"""Which judge a read means: the one asked for, or else the only one there is.

Apart from tunix_rt.quality.evaluation so that the read paths (the leaderboard, the
gate) do not import the judges and numpy to pick one: ~0.2 s of every `tunix-rt
leaderboard`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tunix_rt.errors import InvalidInputError, NotFoundError


def choose_judge(asked: str | None, judges: Callable[[], Sequence[str]], *, none: str,
                 several: str) -> str:
    """The judge asked for, or else the only one there is.

    ``judges()`` (called only when no judge was asked for) names the judges to choose
    from: those that evaluated a run, those with a board for a dataset. None of them is
    a :class:`NotFoundError` saying ``none``; several an :class:`InvalidInputError`
    saying ``several`` with ``{judges}`` replaced by their names.
    """
    if asked:
        return asked
    available = list(judges())
    if len(available) == 1:
        return available[0]
    if not available:
        raise NotFoundError(none)
    raise InvalidInputError(several.replace("{judges}", ", ".join(available)))
