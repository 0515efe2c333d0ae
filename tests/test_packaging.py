"""polyrec as a wheel: built from this checkout and installed into a clean virtual environment, it
trains with its built-in default config from any folder (no checkout needed)."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*command, cwd, env=None):
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_a_wheel_in_a_clean_environment_trains_with_its_packaged_config(tmp_path):
    source = tmp_path / "source"   # built from a copy: a build writes build/ and egg-info beside its sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "polyrec", source / "polyrec", ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
        source, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("polyrec-*.whl"))
    base = getattr(sys, "_base_executable", sys.executable)
    run(base, "-m", "venv", tmp_path / "venv", cwd=tmp_path)
    venv_python = tmp_path / "venv" / "bin" / "python"
    # the dependencies come from this environment (no download); polyrec itself only from the wheel
    site = run(venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(venv_python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {"PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    where = run(venv_python, "-c", "import polyrec.cli as c; print(c.__file__); print(c.DEFAULT_CONFIG.is_file(), "
                "c.STUDENT_CONFIG.is_file())", cwd=away, env=env).split()
    assert where[0].startswith(site) and where[1:] == ["True", "True"]
    out = run(tmp_path / "venv" / "bin" / "polyrec", "train", "--set", "train.max_epochs=1", "--set", "history=null",
              "--set", "text=null", "--set", "eval.ranking=false", "--set", "train.progress=false", "-o", "run",
              cwd=away, env=env)
    assert "run directory: run" in out and (away / "run" / "metrics.json").exists()
