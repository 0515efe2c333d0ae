"""Text templates: ``"{title} ({year}). Genres: {genres}"`` rendered over table rows."""
from __future__ import annotations

import string

import numpy as np
import pandas as pd

from polyrec.errors import DataError
from polyrec.values import token


def template_fields(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def as_text(value) -> str:
    """A cell as template text: a list as "a, b, c", a missing value as "", a whole float as an
    integer (see :func:`polyrec.values.token`)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(as_text(v) for v in value)
    return "" if pd.api.types.is_scalar(value) and pd.isna(value) else token(value)


def render(template: str, frame: pd.DataFrame, where: str) -> list[str]:
    """One text per row; a missing value renders as an empty string, never as 'nan'."""
    fields = template_fields(template)
    missing = [f for f in fields if f not in frame.columns]
    if missing:
        raise DataError(f"{where} uses column(s) {missing} that the table lacks; its columns are "
                        f"{list(frame.columns)}")
    values = {f: [as_text(v) for v in frame[f]] for f in fields}
    return [" ".join(template.format(**{f: values[f][r] for f in fields}).split()) for r in range(len(frame))]
