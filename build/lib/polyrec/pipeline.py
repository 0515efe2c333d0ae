"""Train → evaluate → write a run directory: what `polyrec train`, `distill` and `quickstart` run."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from polyrec.config import Config
from polyrec.recommender import MultiTaskRecommender
from polyrec.errors import RunError
from polyrec.rundir import DISTILLED_FROM, RunWriter, unfinished
from polyrec import distributed
from polyrec.serve.bundle import read_config, read_json, write_bundle, write_json


def train_run(config: Config, out: str | Path, overwrite: bool = False,
              fit: Callable[[Path], MultiTaskRecommender] | None = None,
              resume: bool = False, teacher: Path | None = None) -> tuple[MultiTaskRecommender, dict]:
    """Train with ``fit(log_dir)`` (default: the config's model from scratch), evaluate on test,
    and write the run directory ``out``; returns (recommender, metrics). ``teacher``: the run
    directory ``fit`` distils (recorded in the run, so a killed student is not resumed as a
    plain model).

    ``out`` is checked before any work (see :mod:`polyrec.rundir`); the training log goes into
    the staging folder as training runs, and the whole run appears at ``out`` only at the end.
    ``resume``: continue the unfinished run of ``out`` from its last checkpoint (see :func:`resume_run`).
    Launched by torchrun, every process trains and only the first (rank 0) writes the run; the
    others return an empty metrics dict.
    """
    if distributed.rank() != 0:
        return (fit(None) if fit is not None else MultiTaskRecommender(config).fit(resume=resume)), {}
    with RunWriter(out, overwrite, resume) as run:
        if not resume:
            write_json(run.staging / "config.json", config.model_dump())   # what a resumed run reads
            if teacher is not None:
                write_json(run.staging / DISTILLED_FROM, {"teacher": str(Path(teacher).resolve())})
        start = time.perf_counter()
        rec = (fit(run.staging) if fit is not None
               else MultiTaskRecommender(config).fit(log_dir=run.staging, resume=resume))
        seconds = time.perf_counter() - start
        metrics = {"valid": rec.result.best_valid, "test": rec.evaluate(progress=config.train.progress),
                   "best_epoch": rec.result.best_epoch, "epochs": rec.result.epochs, "train_seconds": seconds,
                   "train_samples_per_s": rec.result.train_samples_per_s, "params": rec.model.n_parameters(),
                   "serving_params": rec.model.n_serving_parameters()}
        write_bundle(run.staging, rec.to_bundle())
        write_json(run.staging / "metrics.json", metrics)
        run.commit()
    return rec, metrics


def resume_run(out: str | Path, overwrite: bool = False) -> tuple[MultiTaskRecommender, dict]:
    """Continue a ``train_run`` to ``out`` that was killed, from its last checkpoint, with the
    config it was started with; the finished run is what the uninterrupted one would have been."""
    staging = unfinished(Path(out))
    if (staging / DISTILLED_FROM).exists():
        teacher = read_json(staging / DISTILLED_FROM, "a polyrec distillation record").get("teacher")
        raise RunError(f"{out} was a student that distils the teacher {teacher}: resuming a distillation is not "
                       f"supported (it would go on as plain training); distil again with `polyrec distill --teacher "
                       f"{teacher} --out {out}` (its unfinished folder {staging} can be deleted)")
    return train_run(read_config(staging), out, overwrite, resume=True)
