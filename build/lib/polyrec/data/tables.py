"""Raw tables (interactions, users, items) and their schema validation (reading them: data/sources.py).

Validation runs before anything is trained or written and names the table, column
and offending rows, so a bad file costs the user seconds, not a stack trace.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from polyrec.config import Config
from polyrec.errors import DataError
from polyrec.text.templates import template_fields


@dataclass
class Tables:
    interactions: pd.DataFrame
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None


def _examples(values) -> str:
    values = [v.item() if isinstance(v, np.generic) else v for v in values]
    shown = ", ".join(repr(v) for v in values[:5])
    return shown + (f" ... ({len(values)} in all)" if len(values) > 5 else "")


def _require_columns(df: pd.DataFrame, columns: list[str], table: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{table} table: missing column(s) {missing}; it has {list(df.columns)}")


def ids(series: pd.Series, table: str, column: str) -> pd.Series:
    """Ids as text (1.0 → \"1\"), none missing: what the catalog is keyed by."""
    _scalar_cells(series, table, column)
    if series.isna().any():
        rows = series.index[series.isna()]
        raise DataError(f"{table} table: column '{column}' has missing ids at rows {_examples(rows)}")
    if pd.api.types.is_float_dtype(series) and (series % 1 == 0).all():
        series = series.astype(np.int64)
    return series.astype(str)


NO_ITEM = "__item__"   # the item column of a dataset without items (data.item_col: null): one constant item
SPLIT_NAMES = ("train", "valid", "test")
_CONTAINERS = (list, tuple, set, dict, np.ndarray)


def item_column(spec) -> str:
    return spec.item_col or NO_ITEM


def validate(tables: Tables, config: Config) -> Tables:
    """Check ``tables`` against ``config`` and return normalized copies (string ids, numeric labels
    and time; a dependent task's label is NaN where its parent's is 0: it does not exist there)."""
    spec = config.data
    inter = tables.interactions.copy()
    label_cols = list(dict.fromkeys(t.col for t in config.tasks))
    need = [spec.user_col, *([spec.item_col] if spec.item_col else []), *label_cols]
    if spec.split.method in ("temporal", "leave_last_out") or config.reads_events:
        need.append(spec.time_col)
    if spec.split.given:
        need.append(spec.split.column)
    _require_columns(inter, need, "interactions")
    if len(inter) == 0:
        raise DataError("interactions table is empty")
    item_col = item_column(spec)
    if spec.item_col is None:
        inter[item_col] = "(none)"
    inter[spec.user_col] = ids(inter[spec.user_col], "interactions", spec.user_col)
    inter[item_col] = ids(inter[item_col], "interactions", item_col)
    if spec.split.given:
        inter[spec.split.column] = _split_names(inter[spec.split.column])
    else:   # given rows may repeat a pair (pre-drawn negatives); derived splits need one row per pair
        dup = inter.duplicated([spec.user_col, item_col], keep=False)
        if dup.any():
            pairs = inter.loc[dup, [spec.user_col, item_col]].drop_duplicates().itertuples(index=False)
            raise DataError(f"interactions table: duplicate (user, item) pairs in columns '{spec.user_col}', "
                            f"'{item_col}': {_examples(map(tuple, pairs))} at rows {_examples(inter.index[dup])}; "
                            "aggregate repeated interactions into one row per pair first (or give the split "
                            "with the rows: data.split.method column)")
    if spec.time_col is not None and spec.time_col in inter:
        inter[spec.time_col] = table_time(inter[spec.time_col])
    inter = validate_labels(inter, config, "interactions")
    for label in config.data.negatives.labels:
        if label not in label_cols:
            raise DataError(f"data.negatives.labels: '{label}' is not the label column of any task {label_cols}")

    users = _side(tables.users, spec.user_col, "users", inter[spec.user_col], config, "user")
    items = _side(tables.items, item_col, "items", inter[item_col], config, "item")
    if spec.title_col is not None and spec.title_col not in items.columns:
        raise DataError(f"items table: title column '{spec.title_col}' not found; it has {list(items.columns)}")
    return Tables(inter.reset_index(drop=True), users, items)


def validate_labels(frame: pd.DataFrame, config: Config, table: str) -> pd.DataFrame:
    """``frame`` with every task's label column numeric and checked (see :func:`validate`)."""
    frame = frame.copy()
    tasks = {t.name: t for t in config.tasks}
    for task in config.tasks:
        frame[task.col] = _label(frame[task.col], task.col, table)
    for task in config.tasks:
        values = frame[task.col]
        missing = values.isna()
        if task.depends_on is not None:
            missing &= frame[tasks[task.depends_on].col] != 0
        if missing.any():
            raise DataError(f"{table} table: label '{task.col}' (task '{task.name}') is NaN at rows "
                            f"{_examples(frame.index[missing])}"
                            + ("" if task.depends_on else "; only a task with depends_on may lack labels, and only "
                               "where its parent label is 0"))
        if task.kind == "binary":
            bad = values.notna() & ~values.isin([0.0, 1.0])
            if bad.any():
                raise DataError(f"{table} table: binary label '{task.col}' must be 0 or 1, found "
                                f"{_examples(values[bad].unique())} at rows {_examples(frame.index[bad])}")
        else:
            infinite = values.notna() & ~np.isfinite(values)
            if infinite.any():
                raise DataError(f"{table} table: regression label '{task.col}' is infinite at rows "
                                f"{_examples(frame.index[infinite])}")
        if task.depends_on is not None and task.kind == "binary":
            parent = tasks[task.depends_on].col
            orphan = (values > 0) & (frame[parent] == 0)
            if orphan.any():
                raise DataError(f"{table} table: label '{task.col}' (task '{task.name}') is positive where its "
                                f"parent label '{parent}' is 0, at rows {_examples(frame.index[orphan])}; a "
                                f"'{task.name}' can only happen after a '{task.depends_on}': fix those rows, or "
                                f"leave '{task.col}' empty there")
    for task in config.tasks:   # the child does not exist where its parent did not happen
        if task.depends_on is not None:
            frame.loc[frame[tasks[task.depends_on].col] == 0, task.col] = np.nan
    return frame


def _split_names(series: pd.Series) -> pd.Series:
    names = series.astype(str).str.strip().str.lower()
    bad = ~names.isin(SPLIT_NAMES) | series.isna()
    if bad.any():
        raise DataError(f"interactions table: split column '{series.name}' must hold train, valid or test; found "
                        f"{_examples(series[bad].astype(str).unique())} at rows {_examples(series.index[bad])}")
    return names


def table_time(series: pd.Series, table: str = "interactions table") -> pd.Series:
    """A time column as numbers (dates as nanoseconds); an error names values that are neither."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return series.astype("int64")
    numeric = pd.to_numeric(series, errors="coerce")
    if numeric.isna().any():
        parsed = pd.to_datetime(series, errors="coerce", format="mixed")
        if parsed.isna().any():
            raise DataError(f"{table}: time column '{series.name}' has values that are neither numbers "
                            f"nor dates, e.g. {_examples(series[parsed.isna()].unique())} at rows "
                            f"{_examples(series.index[parsed.isna()])}")
        return parsed.astype("int64")
    return numeric


def _label(series: pd.Series, column: str, table: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        return series.astype(np.float32)
    try:
        numeric = pd.to_numeric(series, errors="coerce")
    except TypeError:   # cells that are lists, dicts, ...
        numeric = pd.Series(np.nan, index=series.index)
    bad = numeric.isna() & series.notna()
    if bad.any():
        raise DataError(f"{table} table: label '{column}' must be numeric, found "
                        f"{_examples(series[bad].unique())} at rows {_examples(series.index[bad])}")
    return numeric.astype(np.float32)


def _side(df: pd.DataFrame | None, key: str, table: str, used_ids: pd.Series, config: Config,
          source: str) -> pd.DataFrame:
    """A user or item table keyed by id; built from the interactions' ids when none is given."""
    columns = [f.col for f in config.features if f.source == source and f.col != key]
    if df is None:
        if columns:
            raise DataError(f"features {columns} read from the {table} table, but no {table} table was given")
        return pd.DataFrame({key: sorted(used_ids.unique())})
    _require_columns(df, [key, *columns], table)
    df = df.copy()
    df[key] = ids(df[key], table, key)
    dup = df[key].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{table} table: duplicate ids in '{key}': {_examples(df.loc[dup, key].unique())} at rows "
                        f"{_examples(df.index[dup])}")
    unknown = set(used_ids.unique()) - set(df[key])
    if unknown:
        raise DataError(f"interactions reference {len(unknown)} {source} id(s) missing from the {table} table's "
                        f"'{key}' column: {_examples(sorted(unknown))}")
    for feat in config.features:
        if feat.source == source and feat.col != key:
            _scalar_cells(df[feat.col], table, feat.col, lists=feat.kind == "multi")
    return numeric_features(df, table, config, source).reset_index(drop=True)


def _scalar_cells(series: pd.Series, table: str, column: str, lists: bool = False) -> None:
    """Cells are single values (or, with ``lists``, a list of single values: a multi-valued feature)."""
    def bad(cell) -> bool:
        if lists and isinstance(cell, (list, tuple, np.ndarray)):
            return any(isinstance(v, _CONTAINERS) for v in cell)
        return isinstance(cell, _CONTAINERS)
    wrong = series.map(bad).astype(bool)
    if wrong.any():
        row = wrong.idxmax()
        kind = "a single value or a list of single values" if lists else "a single value"
        raise DataError(f"{table} table: column '{column}' must hold {kind} per cell; row {row} holds "
                        f"{type(series[row]).__name__} {str(series[row])[:60]}")


def numeric_features(df: pd.DataFrame, table: str, config: Config, source: str) -> pd.DataFrame:
    """``df`` with its numeric and bucket feature columns (those present) as finite numbers or NaN."""
    df = df.copy()
    for feat in config.features:
        if feat.source == source and feat.kind in ("bucket", "numeric") and feat.col in df:
            column = df[feat.col]
            try:
                values = pd.to_numeric(column, errors="coerce")
            except TypeError:   # cells that are lists, dicts, ...
                values = pd.Series(np.nan, index=column.index)
            bad = values.isna() & column.notna()
            if bad.any():
                raise DataError(f"{table} table: numeric feature '{feat.col}' has non-numeric values "
                                f"{_examples(column[bad].unique())} at rows {_examples(df.index[bad])}")
            infinite = np.isinf(values.to_numpy(dtype=float))
            if infinite.any():
                raise DataError(f"{table} table: numeric feature '{feat.col}' is infinite at rows "
                                f"{_examples(df.index[infinite])}; leave a value empty if it is unknown")
            df[feat.col] = values
    return df


def new_rows(frame, config: Config, source: str) -> pd.DataFrame:
    """Validate rows of new users or items (cold start) as training tables are validated: the id
    column, known columns only (absent features count as missing values), numeric features."""
    table = f"new {source}s"
    key = config.data.user_col if source == "user" else config.data.item_col
    if not isinstance(frame, pd.DataFrame) or len(frame) == 0:
        raise DataError(f"{table}: give a non-empty table (JSON object or list of objects) with a '{key}' column")
    _require_columns(frame, [key], table)
    frame = frame.reset_index(drop=True)
    frame[key] = ids(frame[key], table, key)
    known = {key, *(f.col for f in config.features if f.source == source)}
    text = config.text
    template = text and (text.user_template if source == "user" else text.item_template)
    known |= set(template_fields(template)) if template else set()
    if source == "item" and config.data.title_col:
        known.add(config.data.title_col)
    unknown = [c for c in frame.columns if c not in known]
    if unknown:
        raise DataError(f"{table}: unknown column(s) {unknown}; the model reads {sorted(known)}")
    return numeric_features(frame, table, config, source)
