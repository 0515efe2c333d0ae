"""The GPU paths: run by scripts/gpu_smoke.sh where a GPU is present (it skips, exit 0, elsewhere),
and the parts of it that run as unit tests on a GPU machine."""
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the smoke script runs its checks")
def test_gpu_smoke_says_it_skipped_on_a_machine_without_a_gpu():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_smoke.sh")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "skipped, PyTorch sees no GPU" in done.stdout


@cuda
def test_min_norm_weights_of_a_gram_matrix_on_the_gpu():
    from polyrec.weighting.mgda import min_norm_weights
    gram = torch.tensor([[1.0, 0.0], [0.0, 4.0]], device="cuda")
    alpha = min_norm_weights(gram)
    assert alpha.device.type == "cuda" and torch.allclose(alpha.cpu(), torch.tensor([0.8, 0.2]), atol=1e-4)


@cuda
def test_gpu_smoke_passes():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_smoke.sh")], capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
