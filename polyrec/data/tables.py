"""Raw tables (interactions, users, items), reading them from disk, and schema validation.

Validation runs before anything is trained or written and names the table, column
and offending rows, so a bad file costs the user seconds, not a stack trace.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from polyrec.config import Config, DataSpec


class DataError(ValueError):
    """The data does not match the configuration; the message says what and where."""


@dataclass
class Tables:
    interactions: pd.DataFrame
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv", ".txt"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    raise DataError(f"{what} file {path}: unsupported format '{suffix}' (use .csv, .tsv or .parquet)")


def load_tables(spec: DataSpec) -> Tables:
    if spec.dataset == "movielens-100k":
        from polyrec.data.movielens import load_movielens_100k
        return load_movielens_100k(spec.cache_dir)
    return Tables(
        read_table(spec.interactions, "interactions"),
        read_table(spec.users, "users") if spec.users else None,
        read_table(spec.items, "items") if spec.items else None,
    )


def _examples(values) -> str:
    values = [v.item() if isinstance(v, np.generic) else v for v in values]
    shown = ", ".join(repr(v) for v in values[:5])
    return shown + (f" ... ({len(values)} in all)" if len(values) > 5 else "")


def _require_columns(df: pd.DataFrame, columns: list[str], table: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{table} table: missing column(s) {missing}; it has {list(df.columns)}")


def _ids(series: pd.Series, table: str, column: str) -> pd.Series:
    if series.isna().any():
        rows = series.index[series.isna()]
        raise DataError(f"{table} table: column '{column}' has missing ids at rows {_examples(rows)}")
    if pd.api.types.is_float_dtype(series) and (series % 1 == 0).all():
        series = series.astype(np.int64)
    return series.astype(str)


def validate(tables: Tables, config: Config) -> Tables:
    """Check ``tables`` against ``config`` and return normalized copies (string ids, numeric labels and time)."""
    spec = config.data
    inter = tables.interactions.copy()
    label_cols = list(dict.fromkeys(t.col for t in config.tasks))
    need = [spec.user_col, spec.item_col, *label_cols]
    if config.data.split.method != "random":
        if spec.time_col is None:
            raise DataError(f"split '{config.data.split.method}' needs data.time_col")
        need.append(spec.time_col)
    _require_columns(inter, need, "interactions")
    if len(inter) == 0:
        raise DataError("interactions table is empty")
    inter[spec.user_col] = _ids(inter[spec.user_col], "interactions", spec.user_col)
    inter[spec.item_col] = _ids(inter[spec.item_col], "interactions", spec.item_col)
    dup = inter.duplicated([spec.user_col, spec.item_col], keep=False)
    if dup.any():
        pairs = inter.loc[dup, [spec.user_col, spec.item_col]].drop_duplicates().itertuples(index=False)
        raise DataError(f"interactions table: duplicate (user, item) pairs {_examples(map(tuple, pairs))}; "
                        "aggregate repeated interactions into one row per pair first")
    if spec.time_col is not None and spec.time_col in inter:
        inter[spec.time_col] = _time(inter[spec.time_col])

    tasks = {t.name: t for t in config.tasks}
    for task in config.tasks:
        inter[task.col] = _label(inter[task.col], task.col)
    for task in config.tasks:
        values = inter[task.col]
        missing = values.isna()
        if task.depends_on is not None:
            missing &= inter[tasks[task.depends_on].col] != 0
        if missing.any():
            raise DataError(f"interactions table: label '{task.col}' (task '{task.name}') is NaN at rows "
                            f"{_examples(inter.index[missing])}"
                            + ("" if task.depends_on else "; only a task with depends_on may lack labels, and only "
                               "where its parent label is 0"))
        if task.kind == "binary":
            bad = values.notna() & ~values.isin([0.0, 1.0])
            if bad.any():
                raise DataError(f"interactions table: binary label '{task.col}' must be 0 or 1, found "
                                f"{_examples(values[bad].unique())} at rows {_examples(inter.index[bad])}")
        elif not np.isfinite(values.dropna()).all():
            raise DataError(f"interactions table: regression label '{task.col}' has infinite values")
    for label in config.data.negatives.labels:
        if label not in label_cols:
            raise DataError(f"data.negatives.labels: '{label}' is not the label column of any task {label_cols}")

    users = _side(tables.users, spec.user_col, "users", inter[spec.user_col], config, "user")
    items = _side(tables.items, spec.item_col, "items", inter[spec.item_col], config, "item")
    if spec.title_col is not None and spec.title_col not in items.columns:
        raise DataError(f"items table: title column '{spec.title_col}' not found; it has {list(items.columns)}")
    return Tables(inter.reset_index(drop=True), users, items)


def _time(series: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(series):
        return series.astype("int64")
    numeric = pd.to_numeric(series, errors="coerce")
    if numeric.isna().any():
        parsed = pd.to_datetime(series, errors="coerce", format="mixed")
        if parsed.isna().any():
            raise DataError(f"interactions table: time column has values that are neither numbers nor dates, "
                            f"e.g. {_examples(series[parsed.isna()].unique())}")
        return parsed.astype("int64")
    return numeric


def _label(series: pd.Series, column: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(series):
        return series.astype(np.float32)
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna() & series.notna()
    if bad.any():
        raise DataError(f"interactions table: label '{column}' must be numeric, found "
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
    df[key] = _ids(df[key], table, key)
    dup = df[key].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{table} table: duplicate ids in '{key}': {_examples(df.loc[dup, key].unique())}")
    unknown = set(used_ids.unique()) - set(df[key])
    if unknown:
        raise DataError(f"interactions reference {len(unknown)} {source} id(s) missing from the {table} table: "
                        f"{_examples(sorted(unknown))}")
    for feat in config.features:
        if feat.source == source and feat.kind in ("bucket", "numeric"):
            values = pd.to_numeric(df[feat.col], errors="coerce")
            bad = values.isna() & df[feat.col].notna()
            if bad.any():
                raise DataError(f"{table} table: numeric feature '{feat.col}' has non-numeric values "
                                f"{_examples(df.loc[bad, feat.col].unique())}")
            df[feat.col] = values
    return df.reset_index(drop=True)
