"""`polyrec` command line: train, distill, evaluate, recommend, quickstart."""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from polyrec.config import Config, ConfigError
from polyrec.data.tables import DataError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="polyrec: multi-task recommendation (train, evaluate, recommend).")
console = Console()
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ml100k.yaml"
STUDENT_CONFIG = DEFAULT_CONFIG.with_name("student.yaml")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def _guarded(fn):
    """Turn expected user errors into one clear message and exit code 2, not a traceback."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, FileNotFoundError, ValueError) as err:
            _fail(str(err))
    return run


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_task_table(metrics: dict) -> None:
    table = Table(title="Per-task results (best epoch on validation)")
    for col in ("task", "metric", "valid", "test"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, values in metrics["test"].items():
        if task == "ranking":
            continue
        for metric, value in values.items():
            if metric != "rows":
                table.add_row(task, metric, _fmt(metrics["valid"].get(task, {}).get(metric, "")), _fmt(value))
    console.print(table)


def print_ranking_table(ranking: dict) -> None:
    table = Table(title="Test ranking over the whole catalog (seen items excluded)")
    metrics = [m for m in next(iter(ranking.values())) if m != "users"]
    table.add_column("ranked for")
    for m in metrics + ["users"]:
        table.add_column(m, justify="right")
    for task, values in ranking.items():
        table.add_row(task, *[_fmt(values[m]) for m in metrics], str(values["users"]))
    console.print(table)


def print_recommendations(user: str, items: list[dict], score_names: list[str]) -> None:
    table = Table(title=f"Top-{len(items)} for user {user}")
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("title")
    for name in score_names:
        table.add_column(name, justify="right")
    explained = any("because" in row for row in items)
    if explained:
        table.add_column("because you watched")
    for row in items:
        table.add_row(str(row["rank"]), row["item_id"], row["title"], *[f"{row[n]:.3f}" for n in score_names],
                      *(["; ".join(row.get("because", []))] if explained else []))
    console.print(table)


def train_run(config: Config, out: Path, fit=None):
    """Train (``fit()``, default: the config's model from scratch), evaluate on test, and write
    the run directory; returns (recommender, metrics)."""
    from polyrec.recommender import MultiTaskRecommender

    start = time.perf_counter()
    rec = fit() if fit is not None else MultiTaskRecommender(config).fit()
    seconds = time.perf_counter() - start
    metrics = {"valid": rec.result.best_valid, "test": rec.evaluate(), "best_epoch": rec.result.best_epoch,
               "epochs": rec.result.epochs, "train_seconds": seconds,
               "train_samples_per_s": rec.result.train_samples_per_s, "params": rec.model.n_parameters(),
               "serving_params": rec.model.n_serving_parameters()}
    rec.save(out, metrics)
    return rec, metrics


@app.command()
@_guarded
def train(config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="YAML experiment config"),
          overrides: Optional[list[str]] = typer.Option(None, "--set", help="override a key, e.g. model.arch=ple"),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<arch>-<time>)")):
    """Train a multi-task model and write a run directory (bundle, metrics.json, train_log.jsonl)."""
    cfg = Config.from_yaml(config, overrides)
    out = out or Path("runs") / f"{cfg.model.arch}{'-esmm' if cfg.model.esmm else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    _, metrics = train_run(cfg, out)
    print_task_table(metrics)
    if "ranking" in metrics["test"]:
        print_ranking_table(metrics["test"]["ranking"])
    console.print(f"run directory: [bold]{out}[/]")


@app.command()
@_guarded
def distill(teacher: Path = typer.Option(..., "--teacher", "-t", help="run directory of the trained teacher"),
            config: Path = typer.Option(STUDENT_CONFIG, "--config", "-c",
                                        help="student YAML: the sections that differ from the teacher's config"),
            overrides: Optional[list[str]] = typer.Option(None, "--set", help="override a key, e.g. distill.soft_weight=1"),
            out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/student-<time>)")):
    """Train a small student from a trained teacher; writes a normal run directory."""
    from polyrec.distill import distill as distill_student, student_config
    from polyrec.recommender import MultiTaskRecommender

    teacher_rec = MultiTaskRecommender.load(teacher)
    cfg = student_config(teacher_rec.config, config, overrides)
    out = out or Path("runs") / f"student-{time.strftime('%Y%m%d-%H%M%S')}"
    _, metrics = train_run(cfg, out, lambda: distill_student(teacher_rec, cfg))
    print_task_table(metrics)
    if "ranking" in metrics["test"]:
        print_ranking_table(metrics["test"]["ranking"])
    console.print(f"run directory: [bold]{out}[/]  ({metrics['serving_params']:,} parameters at serving)")


@app.command()
@_guarded
def evaluate(run_dir: Path = typer.Argument(..., help="a directory written by `polyrec train`"),
             as_json: bool = typer.Option(False, "--json", help="print metrics as JSON")):
    """Recompute the test metrics from a run directory's bundle."""
    from polyrec.recommender import MultiTaskRecommender

    rec = MultiTaskRecommender.load(run_dir)
    metrics = rec.evaluate()
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    saved = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    print_task_table({"valid": saved.get("valid", {}), "test": metrics})
    if "ranking" in metrics:
        print_ranking_table(metrics["ranking"])


def _json_rows(value: str, option: str) -> pd.DataFrame:
    """An inline JSON object or list of objects, or ``@path`` to a JSON file holding one."""
    try:
        raw = json.loads(Path(value[1:]).read_text() if value.startswith("@") else value)
    except json.JSONDecodeError as err:
        raise ValueError(f"{option}: not valid JSON ({err}); give an object such as "
                         '\'{"item_id": "x", "title": "..."}\' or @file.json') from None
    rows = [raw] if isinstance(raw, dict) else raw
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{option}: expected a JSON object or a non-empty list of objects")
    return pd.DataFrame(rows)


@app.command()
@_guarded
def recommend(run_dir: Path = typer.Argument(..., help="a directory written by `polyrec train`"),
              user: Optional[str] = typer.Option(None, "--user", "-u", help="user id (default: the --new-user's id)"),
              k: int = typer.Option(10, "-k", help="number of items"),
              new_item: list[str] = typer.Option([], "--new-item", help="a new item as JSON (id, fields, text "
                                                 "columns) or @file.json; scored from its features and text"),
              new_user: Optional[str] = typer.Option(None, "--new-user", help="a new user profile as JSON or @file.json"),
              as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")):
    """Top-k items for a user, with titles, the score of every task and "because you watched" items."""
    from polyrec.recommender import MultiTaskRecommender

    rec = MultiTaskRecommender.load(run_dir)
    for value in new_item:
        rec.add_items(_json_rows(value, "--new-item"))
    if new_user is not None:
        user = user or rec.add_users(_json_rows(new_user, "--new-user"))[0]
    if user is None:
        raise ValueError("give --user ID (or --new-user PROFILE)")
    items = rec.recommend(user, k)
    if as_json:
        print(json.dumps({"user_id": user, "rank_by": rec._rank_by(), "items": items}, indent=2))
    else:
        print_recommendations(user, items, rec.objective.score_names)


@app.command()
@_guarded
def quickstart(config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c"),
               out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o"),
               user: str = typer.Option("42", "--user", "-u")):
    """Fetch MovieLens-100K, train the default multi-task model, print results and recommendations."""
    cfg = Config.from_yaml(config)
    console.print(f"[bold]polyrec quickstart[/]: {cfg.model.arch} on {cfg.data.dataset or cfg.data.interactions}, "
                  f"tasks {[t.name for t in cfg.tasks]}")
    rec, metrics = train_run(cfg, out)
    console.print(f"trained {metrics['epochs']} epochs in {metrics['train_seconds']:.0f}s "
                  f"(best epoch {metrics['best_epoch']}, {metrics['train_samples_per_s']:,.0f} samples/s, "
                  f"{metrics['params']:,} parameters)")
    print_task_table(metrics)
    if "ranking" in metrics["test"]:
        print_ranking_table(metrics["test"]["ranking"])
    print_recommendations(user, rec.recommend(user, 10), rec.objective.score_names)
    console.print(f"run directory: [bold]{out}[/]  (try `polyrec recommend {out} --user 7`)")
