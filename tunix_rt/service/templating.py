"""Server-rendered pages: one Jinja2 environment over ``tunix_rt/service/templates``.

Autoescaping is on for every template; values reach the HTML escaped unless a view
marks them safe (the SVG plots from :mod:`tunix_rt.service.plots`, built from numbers
and escaped labels). No template needs JavaScript.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=PackageLoader("tunix_rt.service", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    return env


def render(template: str, **context: Any) -> str:
    """The page ``template`` (a file under templates/) filled with ``context``."""
    return environment().get_template(template).render(**context)


def _num(value: Any, digits: int = 4) -> str:
    """A number for a table cell: fixed digits; a missing value is an en dash."""
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def _pct(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{float(value):.{digits}%}"
