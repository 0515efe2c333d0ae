"""Writing a run directory without ever losing a file polyrec did not create.

A run is written into a private staging folder next to its target and renamed into place
when it is complete, so the target always holds exactly one whole run. An existing target
is replaced only when it is recognisably an earlier polyrec run (its marker file, and
nothing in it that polyrec does not write) and the caller asked to ``overwrite``; an empty
folder may be used; anything else is refused before any work starts. A lock next to the
target makes a second writer of the same target fail at once (it is released, and its
file removed, when the writer finishes or its process dies).

A run that fails after training started keeps its staging folder, with the training log
written so far, as evidence (``.<name>.partial-<pid>-<token>`` beside the target), and its
last checkpoint, from which ``RunWriter(target, resume=True)`` continues writing.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable

from polyrec.errors import RunError

MARKER = "polyrec-run.json"
CORE_FILES = ("model.safetensors", "config.json", "features.json", "catalog.json")
# every name polyrec writes at the top of a run directory; a folder holding anything else is not replaced
DISTILLED_FROM = "distill.json"   # a student's run: the teacher it distils
RUN_ENTRIES = frozenset({MARKER, *CORE_FILES, "text.safetensors", "history.parquet", "eval", "metrics.json",
                         "train_log.jsonl", "train_steps.jsonl", "tensorboard", "weighting.png",
                         "added_items.jsonl", "model.onnx", "items.faiss", DISTILLED_FROM,
                         "events.parquet"})
EVIDENCE = "train_log.jsonl"
CHECKPOINT = "checkpoint.pt"   # the training state (polyrec.train.checkpoint), kept in unfinished runs only
log = logging.getLogger("polyrec")


def is_run(path: Path) -> bool:
    """A folder polyrec wrote: its marker (or, from before markers, all core files), and nothing else."""
    entries = {p.name for p in path.iterdir()}
    return (MARKER in entries or set(CORE_FILES) <= entries) and entries <= RUN_ENTRIES


def check_target(target: Path, overwrite: bool = False) -> None:
    """Refuse a target that writing a run there could destroy; the message says what to do instead."""
    target = Path(target)
    resolved = target.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise RunError(f"cannot write a run to {target}: it is the current folder or contains it; "
                       "name a new folder, e.g. --out runs/my-run")
    if target.is_symlink():
        raise RunError(f"cannot write a run to {target}: it is a symbolic link; name a new folder")
    if not target.exists():
        return
    if not target.is_dir():
        raise RunError(f"cannot write a run to {target}: it is an existing file; name a new folder")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return
    if not is_run(target):
        foreign = [e for e in entries if e not in RUN_ENTRIES] or entries
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise RunError(f"{target} already exists and holds files that polyrec did not write ({shown}); polyrec "
                       "only replaces a folder it wrote itself: choose a new --out")
    if not overwrite:
        raise RunError(f"{target} holds an earlier polyrec run; pass --overwrite (overwrite=True in Python) to "
                       "replace it, or choose a new --out")


class RunWriter:
    """``with RunWriter(target) as run: ...write into run.staging...; run.commit()``.

    Checks the target at once (before any work), holds the target's lock for the whole
    block, and swaps the staging folder in at :meth:`commit`. Without a commit the staging
    folder is removed, unless it holds a training log (then it is kept as evidence).
    """

    def __init__(self, target: str | Path, overwrite: bool = False, resume: bool = False):
        self.target, self.overwrite, self.resume = Path(target), overwrite, resume
        check_target(self.target, overwrite)
        self.staging: Path | None = unfinished(self.target) if resume else None
        self._lock = _TargetLock(self.target.parent / f".{self.target.name}.lock")
        self._committed = False

    def __enter__(self) -> RunWriter:
        parent = self.target.parent.absolute()
        self._created = [p for p in (parent, *parent.parents) if not p.exists()]   # removed again on failure
        parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(self.target)
        if self.resume:
            if not (self.staging / CHECKPOINT).exists():   # another process resumed and finished it meanwhile
                self._release()
                raise RunError(f"{self.staging} has no checkpoint any more; nothing to resume for {self.target}")
            return self
        try:
            self.staging = self.target.parent / f".{self.target.name}.partial-{os.getpid()}-{secrets.token_hex(3)}"
            self.staging.mkdir()
        except BaseException:
            self._release()
            raise
        return self

    def commit(self) -> Path:
        """Replace the target by the staging folder in one rename (an earlier run is removed after)."""
        (self.staging / CHECKPOINT).unlink(missing_ok=True)   # a finished run does not carry it
        (self.staging / MARKER).write_text(json.dumps({"format": 1, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                                           + "\n")
        try:
            check_target(self.target, self.overwrite)   # someone may have put files there meanwhile
        except RunError as err:
            raise RunError(f"{err} (the finished run is kept in {self.staging})") from None
        previous = None
        if self.target.exists():
            if any(self.target.iterdir()):
                previous = self.target.parent / f".{self.target.name}.replaced-{secrets.token_hex(3)}"
                self.target.rename(previous)
            else:
                self.target.rmdir()
        self.staging.rename(self.target)
        self._committed = True
        if previous is not None:
            shutil.rmtree(previous)
        return self.target

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self._committed and self.staging is not None and self.staging.exists():
                if (self.staging / EVIDENCE).exists() and exc_type is not None:
                    log.warning("polyrec: the unfinished run's training log is kept in %s", self.staging)
                else:
                    shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._release()

    def _release(self) -> None:
        self._lock.release()
        if not self._committed:
            for folder in self._created:   # innermost first; only while empty
                try:
                    folder.rmdir()
                except OSError:
                    break


def unfinished(target: Path) -> Path:
    """The staging folder of an unfinished run of ``target`` that has a checkpoint (the newest)."""
    found = [p for p in target.parent.glob(f".{target.name}.partial-*") if (p / CHECKPOINT).is_file()]
    if not found:
        raise RunError(f"there is no unfinished run of {target} to resume (no .{target.name}.partial-*/{CHECKPOINT} "
                       f"in {target.parent.absolute()}); train it from the start with --out {target}")
    return max(found, key=lambda p: (p / CHECKPOINT).stat().st_mtime)


class _TargetLock:
    """An exclusive, non-blocking lock on a file beside the target, holding the writer's pid.

    flock is released by the kernel when the process dies, so a killed run never leaves a
    stale lock. The file is removed on release; a writer that locked a file that was
    removed meanwhile retries on the current one.
    """

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def acquire(self, target: Path) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunError(f"another polyrec process (pid {holder}) is writing {target} right now; wait "
                               "for it to finish, or choose another --out") from None
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self.fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)   # while still holding the lock, so no one locks a dying file
            os.close(self.fd)
            self.fd = None


def write_new_file(path: Path, write: Callable[[Path], None], option: str = "--out") -> None:
    """Write a file that must not exist yet: ``write`` fills a private partial file, which is then
    linked into place (unlike a rename, a link never replaces a file that appeared meanwhile)."""
    if path.exists():
        raise RunError(f"{option} {path} already exists; polyrec does not replace files it did not write: choose "
                        "a new name or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        write(partial)
        os.link(partial, path)
    except FileExistsError:
        raise RunError(f"{option} {path} appeared while polyrec was writing it; polyrec does not replace it") from None
    finally:
        partial.unlink(missing_ok=True)
