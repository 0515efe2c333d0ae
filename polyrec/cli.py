"""`polyrec` command line: train, distill, evaluate, predict, recommend, tune, quickstart.

Results go to stdout; progress and errors go to stderr, so `--json` output stays parseable.
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from polyrec.config import Config
from polyrec.errors import ConfigError, DataError, PolyrecError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="polyrec: multi-task recommendation (train, evaluate, recommend).")
console = Console()
errors = Console(stderr=True)
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "ml100k.yaml"   # package data: works from a wheel
STUDENT_CONFIG = DEFAULT_CONFIG.with_name("student.yaml")
OVERWRITE = typer.Option(False, "--overwrite", help="replace --out if it holds an earlier polyrec run "
                         "(a folder polyrec did not write is never replaced)")
TEXT_MODEL = typer.Option(None, "--text-model", help="language model for new texts, when the run names a local "
                          "path (a run directory may not choose which files are loaded)")


def _guarded(fn):
    """polyrec's own input errors become one line on stderr and exit code 2; anything else is a
    bug and keeps its traceback."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PolyrecError as err:
            errors.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return run


def _cell(value) -> Text:
    """Table cells are plain text: a title such as "Heat [remastered]" is not rich markup."""
    return Text(f"{value:.4f}" if isinstance(value, float) else str(value))


def print_task_table(metrics: dict) -> None:
    table = Table(title="Per-task results (best epoch on validation)")
    for col in ("task", "metric", "valid", "test"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, values in metrics["test"].items():
        if task in ("ranking", "cold_items", "notes"):
            continue
        for metric, value in values.items():
            if metric != "rows":
                table.add_row(_cell(task), _cell(metric), _cell(metrics["valid"].get(task, {}).get(metric, "")),
                              _cell(value))
    console.print(table)


def print_ranking_table(ranking: dict) -> None:
    table = Table(title="Test ranking over the whole catalog (seen items excluded)")
    metrics = [m for m in next(iter(ranking.values())) if m != "users"]
    table.add_column("ranked for")
    for m in metrics + ["users"]:
        table.add_column(m, justify="right")
    for task, values in ranking.items():
        table.add_row(_cell(task), *[_cell(values[m]) for m in metrics], _cell(values["users"]))
    console.print(table)


def print_results(metrics: dict) -> None:
    test = metrics["test"]
    print_task_table(metrics)
    if "ranking" in test:
        print_ranking_table(test["ranking"])
    if "cold_items" in test:
        console.print(Text("the same on the cold items' rows (items held out of training):"))
        print_results({"valid": {}, "test": test["cold_items"]})
    for key, reason in test.get("notes", {}).items():
        console.print(Text(f"note: {key} left out: {reason}"))


def print_recommendations(user: str, items: list[dict], score_names: list[str], verb: str) -> None:
    table = Table(title=Text(f"Top-{len(items)} for user {user}"))
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("title")
    for name in score_names:
        table.add_column(Text(name), justify="right")
    explained = any("because" in row for row in items)
    if explained:
        table.add_column(Text(f"because you {verb}"))
    for row in items:
        table.add_row(_cell(row["rank"]), _cell(row["item_id"]), _cell(row["title"]),
                      *[f"{row[n]:.3f}" for n in score_names],
                      *([_cell("; ".join(row.get("because", [])))] if explained else []))
    console.print(table)


def _default_out(prefix: str) -> Path:
    """runs/<prefix>-<time>, made unique if a run started in the same second."""
    out = base = Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 2
    while out.exists():
        out, n = base.with_name(f"{base.name}-{n}"), n + 1
    return out


@app.command()
@_guarded
def train(config: Optional[Path] = typer.Option(None, "--config", "-c",
                                               help="YAML experiment config [default: configs/ml100k.yaml]"),
          overrides: Optional[list[str]] = typer.Option(None, "--set", help="override a key, e.g. model.arch=ple"),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<arch>-<time>)"),
          overwrite: bool = OVERWRITE,
          resume: Optional[Path] = typer.Option(None, "--resume", help="continue the killed run whose --out this "
                                                "was, from its last checkpoint, with the config it started with")):
    """Train a multi-task model and write a run directory (bundle, metrics.json, train_log.jsonl)."""
    from polyrec.pipeline import resume_run, train_run

    if resume is not None:
        if config is not None or overrides or out is not None:
            raise ConfigError("--resume continues a run with the config it was started with: leave out --config, "
                              "--set and --out")
        _, metrics = resume_run(resume, overwrite)
        out = resume
    else:
        cfg = Config.from_yaml(config or DEFAULT_CONFIG, overrides)
        out = out or _default_out(f"{cfg.model.arch}{'-esmm' if cfg.model.esmm else ''}")
        _, metrics = train_run(cfg, out, overwrite)
    if not metrics:   # a torchrun process other than the first: that one writes and reports the run
        return
    print_results(metrics)
    console.print(Text.assemble("run directory: ", (str(out), "bold")))


@app.command()
@_guarded
def distill(teacher: Path = typer.Option(..., "--teacher", "-t", help="run directory of the trained teacher"),
            config: Path = typer.Option(STUDENT_CONFIG, "--config", "-c",
                                        help="student YAML: the sections that differ from the teacher's config"),
            overrides: Optional[list[str]] = typer.Option(None, "--set", help="override a key, e.g. distill.soft_weight=1"),
            out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/student-<time>)"),
            overwrite: bool = OVERWRITE):
    """Train a small student from a trained teacher; writes a normal run directory."""
    from polyrec.distill import distill as distill_student
    from polyrec.distill import student_config
    from polyrec.pipeline import train_run
    from polyrec.recommender import MultiTaskRecommender
    from polyrec.rundir import check_target

    out = out or _default_out("student")
    check_target(out, overwrite)   # before loading the teacher: fail in a second, not after a minute
    teacher_rec = MultiTaskRecommender.load(teacher)
    cfg = student_config(teacher_rec.config, config, overrides)
    _, metrics = train_run(cfg, out, overwrite, lambda log_dir: distill_student(teacher_rec, cfg, log_dir=log_dir),
                           teacher=teacher)
    print_results(metrics)
    console.print(Text.assemble("run directory: ", (str(out), "bold"),
                                f"  ({metrics['serving_params']:,} parameters at serving)"))


@app.command()
@_guarded
def evaluate(run_dir: Path = typer.Argument(..., help="a directory written by `polyrec train`"),
             data: Optional[Path] = typer.Option(None, "--data", help="labelled rows (CSV/Parquet) to evaluate "
                                                 "instead of the run's test split"),
             as_json: bool = typer.Option(False, "--json", help="print metrics as JSON")):
    """Metrics per task and full-catalog ranking, on the run's test split or on given rows."""
    from polyrec.data.sources import read_table
    from polyrec.recommender import MultiTaskRecommender
    from polyrec.serve.bundle import read_json

    with errors.status(f"loading {escape(str(run_dir))} ..."):
        rec = MultiTaskRecommender.load(run_dir)
        rows = read_table(data, "evaluation rows") if data is not None else None
    metrics = rec.evaluate(rows, progress=True)
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    saved = read_json(run_dir / "metrics.json") if data is None and (run_dir / "metrics.json").exists() else {}
    print_results({"valid": saved.get("valid", {}) if isinstance(saved, dict) else {}, "test": metrics})


@app.command()
@_guarded
def predict(run_dir: Path = typer.Argument(..., help="a directory written by `polyrec train`"),
            data: Path = typer.Option(..., "--data", help="rows to score (CSV/Parquet with the user and item columns)"),
            out: Path = typer.Option(..., "--out", "-o", help="where the scores go (.parquet or .csv; a new file)")):
    """Score given rows: every task's score added to each row as <name>_score."""
    from polyrec.data.sources import read_table
    from polyrec.recommender import MultiTaskRecommender
    from polyrec.rundir import write_new_file

    if out.suffix.lower() not in (".parquet", ".csv"):
        raise DataError(f"--out {out}: give a .parquet or .csv file name")
    if out.exists():
        raise DataError(f"--out {out} already exists; polyrec does not replace files it did not write: choose a new "
                        "name or remove it")
    rec = MultiTaskRecommender.load(run_dir)
    scores = rec.predict_rows(read_table(data, "rows to score"), progress=True)
    write_new_file(out, lambda partial: (scores.to_parquet if out.suffix.lower() == ".parquet" else scores.to_csv)(
        partial, index=False))
    errors.print(Text(f"{len(scores):,} rows scored: {out}"))


def _json_rows(value: str, option: str) -> pd.DataFrame:
    """An inline JSON object or list of objects, or ``@path`` to a JSON file holding one."""
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise DataError(f"{option}: file not found: {path}")
        try:
            value = path.read_text()
        except UnicodeDecodeError:
            raise DataError(f"{option}: {path} is not UTF-8 text; give a JSON file") from None
    try:
        raw = json.loads(value)
    except json.JSONDecodeError as err:
        raise DataError(f"{option}: not valid JSON ({err}); give an object such as "
                        '\'{"item_id": "x", "title": "..."}\' or @file.json') from None
    rows = [raw] if isinstance(raw, dict) else raw
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{option}: expected a JSON object or a non-empty list of objects")
    return pd.DataFrame(rows)


@app.command()
@_guarded
def recommend(run_dir: Path = typer.Argument(..., help="a directory written by `polyrec train`"),
              user: Optional[str] = typer.Option(None, "--user", "-u", help="user id (default: the --new-user's id)"),
              k: int = typer.Option(10, "-k", min=1, help="number of items"),
              new_item: list[str] = typer.Option([], "--new-item", help="a new item as JSON (id, fields, text "
                                                 "columns) or @file.json; scored from its features and text"),
              new_user: Optional[str] = typer.Option(None, "--new-user", help="a new user profile as JSON or @file.json"),
              new_slots: int = typer.Option(0, "--new-slots", min=0, help="reserve up to this many of the k slots "
                                            "for new items (held out of training or added with --new-item)"),
              new_threshold: float = typer.Option(0.0, "--new-threshold", help="... whose ranking score is at "
                                                  "least this"),
              fusion: Optional[str] = typer.Option(None, "--fusion", help="rank by the product of task scores "
                                                   "raised to weights, e.g. 'watch=1,like=0.5' (default: eval.fusion)"),
              diversity: Optional[float] = typer.Option(None, "--diversity", min=0, max=1, help="MMR λ: 0 plain "
                                                        "ranking, higher more varied lists (default: eval.diversity)"),
              item_filter: list[str] = typer.Option([], "--filter", help="FIELD=VALUE: only items with this value "
                                                    "(repeat: any value of a field, every field named)"),
              text_model: Optional[str] = TEXT_MODEL,
              as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")):
    """Top-k items for a user, with titles, the score of every task and the items that explain them."""
    from polyrec.recommender import MultiTaskRecommender

    if user is not None and new_user is not None:
        raise DataError("give either --user ID (a known user) or --new-user PROFILE (a new one), not both")
    if user is None and new_user is None:
        raise DataError("give --user ID (or --new-user PROFILE)")
    rec = MultiTaskRecommender.load(run_dir, text_model)
    for value in new_item:
        rec.add_items(_json_rows(value, "--new-item"))
    if new_user is not None:
        user = rec.add_users(_json_rows(new_user, "--new-user"))[0]
    items = rec.recommend(user, k, new_slots=new_slots, new_threshold=new_threshold,
                          fusion=_weights(fusion) if fusion else None, diversity=diversity,
                          filters=_filters(item_filter))
    if as_json:
        print(json.dumps({"user_id": user, "rank_by": rec.ranked_by(_weights(fusion) if fusion else None),
                          "items": items}, indent=2))
    else:
        print_recommendations(user, items, rec.objective.score_names, rec.config.data.verb)


def _weights(text: str) -> dict[str, float]:
    """'watch=1,like=0.5' as {watch: 1.0, like: 0.5}."""
    try:
        return {name.strip(): float(value) for name, value in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise DataError(f"--fusion: expected NAME=WEIGHT pairs separated by commas, e.g. 'watch=1,like=0.5'; "
                        f"got {text!r}") from None


def _filters(pairs: list[str]) -> dict[str, list[str]] | None:
    """['genre=Drama', 'genre=Comedy'] as {genre: [Drama, Comedy]}."""
    out: dict[str, list[str]] = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            raise DataError(f"--filter: expected FIELD=VALUE, e.g. 'genre=Drama'; got {pair!r}")
        out.setdefault(field.strip(), []).append(value.strip())
    return out or None


@app.command()
@_guarded
def serve(run_dir: Path = typer.Argument(..., help="a directory written by `polyrec train`"),
          host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (loopback by default)"),
          port: int = typer.Option(8000, "--port", min=1, max=65535),
          onnx: bool = typer.Option(False, "--onnx", help="score with the run's model.onnx (polyrec export --onnx) "
                                    "in onnxruntime; the catalog is then fixed"),
          text_model: Optional[str] = TEXT_MODEL):
    """Serve a run over HTTP: /recommend, /score, /items, /items/{id}/similar, /health, /metrics
    (OpenAPI docs at /docs)."""
    import uvicorn

    from polyrec.service import create_app
    uvicorn.run(create_app(run_dir, text_model, onnx), host=host, port=port)


@app.command()
@_guarded
def export(run_dir: Path = typer.Argument(..., help="a directory written by `polyrec train`"),
           onnx: bool = typer.Option(False, "--onnx", help="the ranking network as ONNX (dynamic batch)"),
           ann: bool = typer.Option(False, "--ann", help="the retrieval head's item index (RUN_DIR/items.faiss), "
                                    "which serving then reads instead of building"),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="where to write it (default: "
                                              "RUN_DIR/model.onnx)"),
           overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier export"),
           text_model: Optional[str] = TEXT_MODEL):
    """Export a run for other runtimes; checks the export against the model on every user × 100 items."""
    from polyrec.recommender import MultiTaskRecommender

    if onnx == ann:
        raise DataError("say what to export: --onnx or --ann (one per call)")
    rec = MultiTaskRecommender.load(run_dir, text_model)
    if ann:
        print(f"wrote {rec.export_ann(out, overwrite)}: {len(rec.item_index()):,} items")
        return
    path = rec.export_onnx(out, overwrite)
    difference = rec.onnx_difference(path)
    print(f"wrote {path}: outputs user × item → {rec.objective.names}; max abs difference from the model "
          f"{difference:.2e} over {len(rec.catalog.user_ids)} users × 100 items")


@app.command()
@_guarded
def tune(config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="YAML experiment config to start from"),
         space: Path = typer.Option(..., "--space", help="YAML search space: config key -> {low, high[, log]} or "
                                    "{choices: [...]}"),
         trials: int = typer.Option(20, "--trials", min=1),
         out: Path = typer.Option(..., "--out", "-o", help="the best config (a new .yaml file); the trials go to "
                                  "<out>.trials.jsonl"),
         seed: int = typer.Option(0, "--seed", help="the sampler's seed"),
         overrides: Optional[list[str]] = typer.Option(None, "--set", help="config override key=value")):
    """Search hyperparameters on the validation split (Optuna TPE, pruned by epoch); writes the best config."""
    from polyrec.rundir import write_new_file
    from polyrec.tune import config_yaml, read_space
    from polyrec.tune import tune as search

    log = out.with_name(out.name + ".trials.jsonl")
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise DataError(f"--out {out}: give a .yaml file name")
    for path in (out, log):
        if path.exists():
            raise DataError(f"--out: {path} already exists; polyrec does not replace files it did not write")
    cfg, ranges = Config.from_yaml(config, overrides), read_space(space)
    best, records = search(cfg, ranges, trials, seed)
    done = [r for r in records if r["state"] == "complete"]
    top = max(done, key=lambda r: r["valid_mean_auc"])
    write_new_file(log, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in records)))
    write_new_file(out, lambda p: p.write_text(config_yaml(best, f"polyrec tune: best of {len(records)} trials "
                                                           f"(trial {top['number']}, validation mean AUC "
                                                           f"{top['valid_mean_auc']:.4f}) from {config}")))
    errors.print(Text(f"best validation mean AUC {top['valid_mean_auc']:.4f} with {top['params']}: {out}"))


@app.command()
@_guarded
def quickstart(config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c"),
               out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o",
                                        help="run directory; an earlier quickstart run there is replaced"),
               user: str = typer.Option("42", "--user", "-u")):
    """Fetch MovieLens-100K, train the default multi-task model, print results and recommendations."""
    from polyrec.pipeline import train_run

    cfg = Config.from_yaml(config)
    console.print(Text(f"polyrec quickstart: {cfg.model.arch} on {cfg.data.dataset or cfg.data.interactions}, "
                       f"tasks {[t.name for t in cfg.tasks]}"))
    rec, metrics = train_run(cfg, out, overwrite=True)
    console.print(f"trained {metrics['epochs']} epochs in {metrics['train_seconds']:.0f}s "
                  f"(best epoch {metrics['best_epoch']}, {metrics['train_samples_per_s']:,.0f} samples/s, "
                  f"{metrics['params']:,} parameters)")
    print_results(metrics)
    print_recommendations(user, rec.recommend(user, 10), rec.objective.score_names, cfg.data.verb)
    console.print(Text(f"run directory: {out}  (try `polyrec recommend {out} --user 7`)"))
