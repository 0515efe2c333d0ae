"""Task weighting methods, by the name used in ``weighting.method``.

Cost per training step, relative to one backward pass:
one backward — static, uncertainty, dwa, famo;
one backward + per-task gradients at the shared representation (task layers only) —
gradnorm, mgda_ub, multibalance; one backward per task — pcgrad.
"""
from pydantic import ValidationError

from polyrec.errors import ConfigError
from polyrec.weighting.base import Weighting
from polyrec.weighting.dwa import DWA
from polyrec.weighting.famo import FAMO
from polyrec.weighting.gradnorm import GradNorm
from polyrec.weighting.mgda import MGDA
from polyrec.weighting.multibalance import MultiBalance
from polyrec.weighting.pcgrad import PCGrad
from polyrec.weighting.static import Static
from polyrec.weighting.uncertainty import Uncertainty

WEIGHTINGS: dict[str, type[Weighting]] = {
    "static": Static, "uncertainty": Uncertainty, "dwa": DWA, "gradnorm": GradNorm, "pcgrad": PCGrad,
    "mgda_ub": MGDA, "famo": FAMO, "multibalance": MultiBalance,
}


def build_weighting(spec, tasks: list) -> Weighting:
    """The method ``spec`` (a WeightingSpec) names, with its options type- and range-checked."""
    if spec.method not in WEIGHTINGS:
        raise ConfigError(f"weighting.method '{spec.method}' is unknown; choose one of {sorted(WEIGHTINGS)}")
    method = WEIGHTINGS[spec.method]
    try:
        options = method.options_model().model_validate(spec.options)
    except ValidationError as err:
        raise ConfigError("; ".join(f"weighting.options.{'.'.join(map(str, e['loc']))} ({spec.method}): {e['msg']}"
                                    for e in err.errors())) from None
    weighted = [t.name for t in tasks if t.weight != 1]
    if weighted and not method.honours_task_weights:
        raise ConfigError(f"weighting.method '{spec.method}' sets each task's weight itself, so tasks[].weight has "
                          f"no meaning for it (set for {weighted}): remove those weights, or use a method that takes "
                          f"them as priorities ({sorted(n for n, m in WEIGHTINGS.items() if m.honours_task_weights)})")
    return method(tasks, **options.model_dump(exclude_unset=True))


__all__ = ["WEIGHTINGS", "Weighting", "build_weighting"]
