"""Judges defined in configuration (``TUNIX_RT_JUDGES_CONFIG``): composites, for now."""

from __future__ import annotations

from tunix_rt.errors import InvalidInputError
from tunix_rt.settings import get_settings

_loaded: set[str] = set()


def ensure_configured_judges() -> list[str]:
    """Register the judges of the configured file, once per process; names them."""
    path = get_settings().judges_config
    if not path or path in _loaded:
        return []
    from tunix_rt.judges.composite import register_composites
    from tunix_rt.specfile import read_yaml

    document = read_yaml(path, what="judges config") or {}
    unknown = set(document) - {"composites"}
    if unknown:
        raise InvalidInputError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                                "expected composites")
    try:
        names = register_composites(document.get("composites") or {})
    except ValueError as exc:
        raise InvalidInputError(f"{path}: {exc}") from None
    _loaded.add(path)
    return names
