"""Text templates: ``"{title} ({year}). Genres: {genres}"`` rendered over table rows."""
from __future__ import annotations

import string

import pandas as pd

from polyrec.errors import DataError


def template_fields(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def render(template: str, frame: pd.DataFrame, where: str) -> list[str]:
    """One text per row; a missing value renders as an empty string, never as 'nan'."""
    fields = template_fields(template)
    missing = [f for f in fields if f not in frame.columns]
    if missing:
        raise DataError(f"{where} uses column(s) {missing} that the table lacks; its columns are "
                        f"{list(frame.columns)}")
    values = {f: frame[f].astype(object).where(frame[f].notna(), "").astype(str).tolist() for f in fields}
    return [" ".join(template.format(**{f: values[f][r] for f in fields}).split()) for r in range(len(frame))]
