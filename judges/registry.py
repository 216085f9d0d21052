"""The judge registry: names map to factories, and mistakes are loud.

A duplicate name raises at registration; an unknown name raises with the list of
names that exist. Each entry records the judge's version, so every stored verdict
can say which judge, at which version, produced it, and its capabilities:

- ``caches``: its factory takes a verdict cache (``cache``, or for a composite a
  ``cache_factory`` giving each member its own), so re-scoring costs nothing;
- ``samples``: it grades by sampling and has ``variant(seed_offset)``, so its
  self-consistency can be measured (a judge that does not sample has none);
- ``costs``: it keeps a cost ledger (``ledger.as_dict()``) of what scoring spent.

Each is declared at :func:`register_judge` or, left out, derived: ``caches`` from the
factory's parameters, ``samples`` and ``costs`` from the class its return annotation
names. A judge must be what its entry says: :meth:`JudgeSpec.build` refuses one that
samples or costs without saying so, or says so and does not.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator

from tunix_rt.judges.base import Judge
from tunix_rt.judges.base import costs as _costs
from tunix_rt.judges.base import samples as _samples

JudgeFactory = Callable[..., Judge]


class JudgeRegistryError(ValueError):
    """A judge name that is unknown, or registered twice."""


# The factory parameters through which a judge takes a verdict cache: ``cache`` (one
# cache) or ``cache_factory`` (a composite: ``(member name, member version) -> cache``).
CACHE_PARAMETERS = ("cache", "cache_factory")
CAPABILITIES = ("caches", "samples", "costs")


@dataclass(frozen=True, slots=True)
class JudgeSpec:
    name: str
    version: str
    description: str
    requires_reference: bool
    factory: JudgeFactory
    caches: bool = False  # its factory takes a verdict cache (see cache_parameter)
    samples: bool = False  # it has variant(seed_offset): self-consistency can be measured
    costs: bool = False  # it keeps a cost ledger of what scoring spent

    @property
    def cache_parameter(self) -> str | None:
        """The factory parameter that takes the cache ("cache" or "cache_factory"), or
        None when the judge does not cache."""
        return _cache_parameter(self.factory) if self.caches else None

    def capabilities(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in CAPABILITIES}

    def build(self, **kwargs: Any) -> Judge:
        """Build the judge, and check that it is what this entry says it is."""
        judge = self.factory(**kwargs)
        for capability, has, what in (("samples", _samples(judge), "a variant() method"),
                                      ("costs", _costs(judge), "a cost ledger")):
            if has != getattr(self, capability):
                raise JudgeRegistryError(
                    f"judge {self.name!r} is registered with {capability}="
                    f"{getattr(self, capability)} but the judge it built "
                    f"{'has' if has else 'has no'} {what}; register it with {capability}={has}")
        return judge


_REGISTRY: dict[str, JudgeSpec] = {}


def _cache_parameter(factory: JudgeFactory) -> str | None:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no parameters to read
        return None
    return next((p for p in CACHE_PARAMETERS if p in parameters), None)


def _returned_class(factory: JudgeFactory) -> type | None:
    """The class the factory's return annotation names, when it can be resolved."""
    annotation = getattr(factory, "__annotations__", {}).get("return")
    if isinstance(annotation, str):
        try:
            annotation = eval(annotation, getattr(factory, "__globals__", {}))  # noqa: S307
        except Exception:  # noqa: BLE001 - an unresolvable annotation derives nothing
            return None
    return annotation if isinstance(annotation, type) else None


def _derived(factory: JudgeFactory) -> dict[str, bool]:
    """The capabilities readable from the factory without building a judge."""
    cls = _returned_class(factory)
    ledger = getattr(cls, "ledger", None)
    declares_ledger = cls is not None and ("ledger" in getattr(cls, "__annotations__", {})
                                           or isinstance(ledger, property)
                                           or callable(getattr(ledger, "as_dict", None)))
    return {"caches": _cache_parameter(factory) is not None,
            "samples": cls is not None and callable(getattr(cls, "variant", None)),
            "costs": declares_ledger}


def register_judge(name: str, *, version: str, description: str = "",
                   requires_reference: bool = False, caches: bool | None = None,
                   samples: bool | None = None,
                   costs: bool | None = None) -> Callable[[JudgeFactory], JudgeFactory]:
    """Register the decorated factory under ``name``; the factory builds the judge.

    ``caches``, ``samples`` and ``costs`` declare the judge's capabilities (see the
    module docstring); each left as None is derived from the factory.
    """
    declared = {"caches": caches, "samples": samples, "costs": costs}

    def decorate(factory: JudgeFactory) -> JudgeFactory:
        if name in _REGISTRY:
            raise JudgeRegistryError(f"a judge named {name!r} is already registered "
                                     f"(version {_REGISTRY[name].version})")
        derived = _derived(factory)
        capabilities = {k: derived[k] if v is None else bool(v) for k, v in declared.items()}
        if capabilities["caches"] and not derived["caches"]:
            raise JudgeRegistryError(f"judge {name!r} is registered with caches=True but its "
                                     f"factory takes none of {', '.join(CACHE_PARAMETERS)}")
        _REGISTRY[name] = JudgeSpec(name, version, description or (factory.__doc__ or "").strip()
                                    .split("\n")[0], requires_reference, factory, **capabilities)
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
    (its ``version``, ``description``, ``requires_reference``, ``caches``,
    ``samples`` and ``costs`` attributes are used when present). A plugin that fails to load is reported and skipped: one broken
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
                           requires_reference=bool(getattr(obj, "requires_reference", False)),
                           **{c: getattr(obj, c, None) for c in CAPABILITIES})(obj)
        loaded.append(ep.name)
    return loaded
