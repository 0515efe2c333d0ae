"""How a table cell reads as a token: one rule for vocabularies, filters, new rows and the text
the language model reads, so that the same value is the same token wherever it comes from."""
from __future__ import annotations

import numpy as np


def token(value) -> str:
    """``value`` as text, whole floats as integers: a year column with a missing value is stored as
    floats (1995.0), and reads "1995" as a new item's ``{"year": 1995}`` or a filter does."""
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)
