"""Where tables come from: CSV/TSV/Parquet files, or a built-in dataset by name."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from polyrec.config import DataSpec
from polyrec.data.ml100k_mt import load_ml100k_mt
from polyrec.data.movielens import load_movielens_100k
from polyrec.data.tables import Tables
from polyrec.errors import ConfigError, DataError

# built-in datasets by the name ``data.dataset`` gives: each takes the data section, returns tables
DATASETS: dict[str, Callable[[DataSpec], Tables]] = {
    "movielens-100k": lambda spec: load_movielens_100k(spec.cache_dir),
    "ml100k-mt": lambda spec: load_ml100k_mt(spec.cache_dir),   # the reference rows, split given
}


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A CSV/TSV/Parquet file as a frame; a file that cannot be parsed is a DataError naming it."""
    import pyarrow

    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".tsv", ".txt"):
        raise DataError(f"{what} file {path}: unsupported format '{suffix}' (use .csv, .tsv or .parquet)")
    if suffix != ".parquet":
        with path.open("rb") as f:
            if b"\0" in f.read(1 << 16):
                raise DataError(f"{what} file {path} is a binary file, not {suffix[1:].upper()} text; give a CSV/TSV "
                                "text file, or a Parquet file named .parquet")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError as err:
        raise DataError(f"{what} file {path} is not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at "
                        f"position {err.start}): save it as UTF-8 (e.g. iconv -f latin1 -t utf-8) or as Parquet"
                        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} file {path} is empty: it needs a header row with the column names") from None
    except pd.errors.ParserError as err:
        raise DataError(f"{what} file {path} is not valid CSV: {err}") from None
    except (pyarrow.ArrowException, OSError) as err:
        raise DataError(f"{what} file {path} cannot be read as {suffix[1:]} ({str(err)[:200]}); it may be "
                        "truncated or corrupt: write it again") from None


def load_tables(spec: DataSpec) -> Tables:
    if spec.dataset is not None:
        if spec.dataset not in DATASETS:
            raise ConfigError(f"data.dataset '{spec.dataset}' is not a built-in dataset; choose one of "
                              f"{sorted(DATASETS)}, or give data.interactions (a CSV/Parquet path)")
        return DATASETS[spec.dataset](spec)
    return Tables(
        read_table(spec.interactions, "interactions") if spec.interactions else read_split_files(spec),
        read_table(spec.users, "users") if spec.users else None,
        read_table(spec.items, "items") if spec.items else None,
    )


def read_split_files(spec: DataSpec) -> pd.DataFrame:
    """``data.train``, ``valid`` and ``test`` as one interactions table, each row's file in the split column
    (with ``data.streaming``, valid and test only: the training rows are read as they are trained on)."""
    names = ("valid", "test") if spec.streaming else ("train", "valid", "test")
    frames = {name: read_table(getattr(spec, name), f"{name} rows") for name in names}
    columns = list(frames[names[0]].columns)
    for name, frame in frames.items():
        if spec.split.column in frame.columns:
            raise DataError(f"{name} rows file {getattr(spec, name)} has a column '{spec.split.column}', the name "
                            "polyrec gives the split; rename it or set data.split.column")
        if set(frame.columns) != set(columns):
            raise DataError(f"{name} rows file {getattr(spec, name)} has columns {sorted(frame.columns)} but the "
                            f"{names[0]} file has {sorted(columns)}; give the files the same columns")
    return pd.concat([frame.assign(**{spec.split.column: name}) for name, frame in frames.items()], ignore_index=True)
