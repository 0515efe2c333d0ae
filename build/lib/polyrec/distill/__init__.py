"""Knowledge distillation: a trained (text-aware) teacher into a small, fast student."""
from polyrec.distill.distiller import distill, student_config

__all__ = ["distill", "student_config"]
