"""Task weighting methods, by the name used in ``weighting.method``."""
from polyrec.config import ConfigError, TaskSpec, WeightingSpec
from polyrec.weighting.base import Weighting
from polyrec.weighting.static import Static

WEIGHTINGS: dict[str, type[Weighting]] = {"static": Static}


def build_weighting(spec: WeightingSpec, tasks: list[TaskSpec]) -> Weighting:
    if spec.method not in WEIGHTINGS:
        raise ConfigError(f"weighting.method '{spec.method}' is unknown; choose one of {sorted(WEIGHTINGS)}")
    try:
        return WEIGHTINGS[spec.method](tasks, **spec.options)
    except TypeError as err:
        raise ConfigError(f"weighting.options for '{spec.method}': {err}") from None


__all__ = ["WEIGHTINGS", "Weighting", "build_weighting"]
