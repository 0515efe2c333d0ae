"""Property-based: generated malformed tables and configs always end in polyrec's own error,
naming the table (or config key) and column, and nothing is written."""
import copy
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from polyrec.cli import app
from polyrec.config import Config
from polyrec.errors import ConfigError, PolyrecError
from polyrec.pipeline import train_run
from tests.conftest import BASE, make_tables
from tests.helpers import snapshot

NUMERIC = {"interactions": ["ts", "click", "buy", "stars"], "users": ["age"], "items": ["price"]}
REQUIRED = {"interactions": ["user", "item", "ts", "click", "buy", "stars"], "users": ["user", "country", "age"],
            "items": ["item", "name", "price", "tags"]}
KEYS = {"interactions": ("user", "item"), "users": ("user",), "items": ("item",)}
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# text that no parser takes for a number, a date or a missing value
words = st.text(st.characters(categories=["L", "P", "Zs"], exclude_characters="\x00"), min_size=1,
                max_size=12).map(lambda s: "x" + s)


@st.composite
def mutation(draw):
    """(description, table, columns it concerns, function that breaks a Tables in place)."""
    kind = draw(st.sampled_from(["drop", "text", "missing_id", "binary", "nan_root", "inf", "orphan", "dup_pair",
                                 "dup_id", "unknown_id"]))
    row = draw(st.integers(0, 29))
    if kind == "drop":
        table = draw(st.sampled_from(sorted(REQUIRED)))
        column = draw(st.sampled_from(REQUIRED[table]))
        return kind, table, [column], lambda t: setattr(t, table, getattr(t, table).drop(columns=[column], errors="ignore"))
    if kind == "text":
        table = draw(st.sampled_from(sorted(NUMERIC)))
        column, value = draw(st.sampled_from(NUMERIC[table])), draw(words)
        return kind, table, [column], lambda t: _set(getattr(t, table), row, column, value)
    if kind == "missing_id":
        table = draw(st.sampled_from(sorted(KEYS)))
        column = draw(st.sampled_from(KEYS[table]))
        return kind, table, [column], lambda t: _set(getattr(t, table), row, column, None)
    if kind == "binary":
        column, value = draw(st.sampled_from(["click", "buy"])), draw(st.sampled_from([2.0, -1.0, 0.5, 7.0]))
        return kind, "interactions", [column], lambda t: _set(t.interactions, row, column, value)
    if kind == "nan_root":
        return kind, "interactions", ["click"], lambda t: _set(t.interactions, row, "click", np.nan)
    if kind == "inf":
        table, column = draw(st.sampled_from([("interactions", "stars"), ("users", "age"), ("items", "price")]))
        value = draw(st.sampled_from([np.inf, -np.inf]))
        return kind, table, [column], lambda t: _set(getattr(t, table), row, column, value)
    if kind == "orphan":
        return kind, "interactions", ["buy", "click"], lambda t: (_set(t.interactions, row, "click", 0.0),
                                                                   _set(t.interactions, row, "buy", 1.0))
    if kind == "dup_pair":
        return kind, "interactions", ["user", "item"], lambda t: _repeat_row(t, "interactions", row)
    if kind == "dup_id":
        table = draw(st.sampled_from(["users", "items"]))
        return kind, table, list(KEYS[table]), lambda t: _repeat_row(t, table, row)
    table = draw(st.sampled_from(["users", "items"]))   # a side table lacks an id the interactions use
    return kind, table, list(KEYS[table]), lambda t: _drop_used_id(t, table, row)


def _drop_used_id(tables, table, row):
    key = KEYS[table][0]
    used = tables.interactions[key].dropna() if key in tables.interactions else pd.Series(dtype=object)
    side = getattr(tables, table)
    if len(used) and key in side:
        setattr(tables, table, side[side[key] != used.iloc[row % len(used)]])


def _repeat_row(tables, table, row):
    frame = getattr(tables, table)
    setattr(tables, table, pd.concat([frame, frame.iloc[[row % len(frame)]]], ignore_index=True))


def _set(frame, row, column, value):
    if column in frame and row in frame.index:
        if not isinstance(value, float) or frame[column].dtype.kind not in "fi":
            frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value


def _write(tables, folder: Path, formats: dict) -> dict:
    paths = {}
    for name in ("interactions", "users", "items"):
        frame, path = getattr(tables, name), folder / f"{name}.{formats[name]}"
        if formats[name] == "parquet":   # Parquet columns have one type: mixed object cells become text
            frame = frame.apply(lambda c: c.map(lambda v: v if v is None or isinstance(v, str) or pd.isna(v)
                                                else str(v)) if c.dtype == object else c)
            frame.to_parquet(path)
        else:
            frame.to_csv(path, index=False)
        paths[name] = str(path)
    return paths


@SETTINGS
@given(mutations=st.lists(mutation(), min_size=1, max_size=3),
       formats=st.fixed_dictionaries({n: st.sampled_from(["csv", "parquet"]) for n in ("interactions", "users",
                                                                                        "items")}))
def test_malformed_tables_end_in_a_named_error_and_write_nothing(mutations, formats):
    tables = make_tables()
    for _, _, _, apply in mutations:
        apply(tables)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        raw = copy.deepcopy(BASE)
        raw["data"].update(_write(tables, folder, formats))
        before = snapshot(folder)
        with pytest.raises(PolyrecError) as caught:
            train_run(Config.from_dict(raw), folder / "runs" / "run")
        message = str(caught.value)
        assert any(f"{table} table" in message and any(f"'{c}'" in message for c in columns)
                   for _, table, columns, _ in mutations), (message, [m[:3] for m in mutations])
        assert snapshot(folder) == before   # nothing written: no run, no staging folder, no lock


BAD_VALUES = {
    "int": [0, -3, "abc", 1.5, [1], {"a": 1}, None],
    "count": [-1, "abc", 1.5, None],
    "fraction": [-0.5, 1.0, 2, "abc", float("nan"), float("inf"), [0.1]],
    "share_or_ids": [-0.5, 1.0, 2, float("nan"), float("inf"), {"a": 1}, [[1]]],
    "positive": [0, -1e-3, "fast", float("nan"), float("inf"), None],
    "choice": ["transformer", 3, None, ["mmoe"]],
    "dims": ["abc", [0], [-4, 8], [], 12, [1.5]],
}
CONFIG_KEYS = [(("model", "embed_dim"), "int"), (("train", "batch_size"), "int"), (("train", "max_epochs"), "int"),
               (("model", "n_experts"), "int"), (("data", "negatives", "per_positive"), "count"),
               (("model", "dropout"), "fraction"), (("data", "split", "test"), "fraction"),
               (("data", "cold_items"), "share_or_ids"), (("train", "lr"), "positive"),
               (("distill", "temperature"), "positive"), (("model", "arch"), "choice"),
               (("data", "split", "method"), "choice"), (("model", "expert_dims"), "dims"),
               (("eval", "ks"), "dims")]


@st.composite
def broken_config(draw):
    raw = copy.deepcopy(BASE)
    kind = draw(st.sampled_from(["value", "unknown_key", "drop_section"]))
    if kind == "drop_section":
        section = draw(st.sampled_from(["data", "features", "tasks"]))
        del raw[section]
        return raw, section
    if kind == "unknown_key":
        section = draw(st.sampled_from(["data", "model", "train", "eval"]))
        key = draw(st.from_regex(r"[a-z]{3,10}", fullmatch=True))
        raw.setdefault(section, {})[f"no_{key}"] = 1
        return raw, f"{section}.no_{key}"
    path, kind = draw(st.sampled_from(CONFIG_KEYS))
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = draw(st.sampled_from(BAD_VALUES[kind]))
    return raw, ".".join(path)


@SETTINGS
@given(case=broken_config())
def test_malformed_configs_name_the_key_and_write_nothing(case):
    raw, key = case
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config.from_dict(copy.deepcopy(raw))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "cfg.yaml").write_text(yaml.safe_dump(raw))
        before = snapshot(folder)
        out = CliRunner().invoke(app, ["train", "-c", str(folder / "cfg.yaml"), "-o", str(folder / "run")])
        assert out.exit_code == 2 and key in out.stderr and "Traceback" not in out.output
        assert snapshot(folder) == before
