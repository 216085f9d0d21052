"""The judge registry: names map to factories, and mistakes are loud.

A duplicate name raises at registration; an unknown name raises with the list of
names that exist. Each entry records the judge's version, so every stored verdict
can say which judge, at which version, produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator

from tunix_rt.judges.base import Judge

JudgeFactory = Callable[..., Judge]


class JudgeRegistryError(ValueError):
    """A judge name that is unknown, or registered twice."""


@dataclass(frozen=True, slots=True)
class JudgeSpec:
    name: str
    version: str
    description: str
    requires_reference: bool
    factory: JudgeFactory

    def build(self, **kwargs: Any) -> Judge:
        return self.factory(**kwargs)


_REGISTRY: dict[str, JudgeSpec] = {}


def register_judge(name: str, *, version: str, description: str = "",
                   requires_reference: bool = False) -> Callable[[JudgeFactory], JudgeFactory]:
    """Register the decorated factory under ``name``; the factory builds the judge."""

    def decorate(factory: JudgeFactory) -> JudgeFactory:
        if name in _REGISTRY:
            raise JudgeRegistryError(f"a judge named {name!r} is already registered "
                                     f"(version {_REGISTRY[name].version})")
        _REGISTRY[name] = JudgeSpec(name, version, description or (factory.__doc__ or "").strip()
                                    .split("\n")[0], requires_reference, factory)
        return factory

    return decorate


def unregister_judge(name: str) -> None:
    """Remove a judge (for tests and plugins that replace one on purpose)."""
    _REGISTRY.pop(name, None)


def judge_spec(name: str) -> JudgeSpec:
    """The registered spec for ``name``; an unknown name lists what exists."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise JudgeRegistryError(f"unknown judge {name!r}; registered judges: {known}") from None


def get_judge(name: str, **kwargs: Any) -> Judge:
    """Build the judge registered as ``name``."""
    return judge_spec(name).build(**kwargs)


def list_judges() -> list[JudgeSpec]:
    """Every registered judge, sorted by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def _registered(name: str) -> str:
    judge_spec(name)  # raises, listing the registered judges
    return name


# A judge name that must be registered: as a flow parameter's type, it makes Prefect
# refuse an unknown name before the run starts, with the list of what exists.
RegisteredJudge = Annotated[str, AfterValidator(_registered)]


PLUGIN_GROUP = "tunix_rt.judges"


def load_plugins(group: str = PLUGIN_GROUP) -> list[str]:
    """Register third-party judges named in the ``tunix_rt.judges`` entry point group.

    An entry point names a module whose import registers its judges with
    :func:`register_judge`, or a factory, registered under the entry point's name
    (its ``version``, ``description`` and ``requires_reference`` attributes are used
    when present). A plugin that fails to load is reported and skipped: one broken
    package must not take every judge down with it.
    """
    import warnings
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - reported, and the others still load
            warnings.warn(f"judge plugin {ep.name!r} ({ep.value}) failed to load: {exc}",
                          RuntimeWarning, stacklevel=2)
            continue
        if ep.name not in _REGISTRY and callable(obj):
            register_judge(ep.name, version=str(getattr(obj, "version", "0")),
                           description=getattr(obj, "description", ""),
                           requires_reference=bool(getattr(obj, "requires_reference", False)))(
                               obj)
        loaded.append(ep.name)
    return loaded
