"""Peak memory in copies of M, counted op by op (``benchmarks/bench_memory.py``): the issue's
target is 6; these are the ceilings the code meets now, so that a change that holds one more
copy fails here rather than only in the benchmark."""

import importlib.util
import logging
import warnings
from pathlib import Path

import pytest
import torch

from gdinv_modules import InverseTracker, conditioned_matrix, invert

spec = importlib.util.spec_from_file_location(
    "bench_memory", Path(__file__).parent.parent / "benchmarks" / "bench_memory.py"
)
bench_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_memory)

# float32 keeps a float64 copy of M (two copies) for refinement's corrections, and a fit's
# rank check and final residual take wide copies of M and X
CEILINGS = {
    torch.float64: {"invert": 4, "update": 3, "fit": 5, "invert symmetric": 5, "fit symmetric": 6},
    torch.float32: {"invert": 6, "update": 5, "fit": 6, "invert symmetric": 6, "fit symmetric": 6},
}


@pytest.mark.parametrize("dtype", list(CEILINGS))
def test_peak_memory_stays_within_its_copies_of_m(dtype):
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    matrix = conditioned_matrix(64, condition=50.0, dtype=torch.float64).to(dtype)
    tracker = InverseTracker(matrix)
    drifted = matrix + 1e-4 * torch.randn(matrix.shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on a tiny run
        peaks = {
            "invert": bench_memory.peak_copies(lambda: invert(matrix), matrix)[0],
            "update": bench_memory.peak_copies(
                lambda: tracker.update(drifted), drifted, *tracker.buffers()
            )[0],
            "fit": bench_memory.peak_copies(lambda: bench_memory.fit(matrix), matrix)[0],
            # the symmetric operator's power iteration and its residual, in M's dtype and
            # by blocks (they held 9 and 19 copies)
            "invert symmetric": bench_memory.peak_copies(
                lambda: invert(matrix, formulation="symmetric"), matrix
            )[0],
            "fit symmetric": bench_memory.peak_copies(
                lambda: bench_memory.fit(matrix, "symmetric"), matrix
            )[0],
        }
    assert all(peaks[name] <= ceiling for name, ceiling in CEILINGS[dtype].items()), peaks
