"""``invert()`` against its ideal: (descent steps + refinement steps) x one bare step, where a
bare step is the two matrix products and the momentum update, nothing else.

    python benchmarks/bench_overhead.py [--repeats 5]

The cases of issue 19 (condition number 2.25): 3 x 512 and 1024 float64, 64 x 64x64 float32
under ``invert()``'s default ``check_rank="auto"`` (which for a float64 M on the CPU runs the
rank check first, and its spectrum skips descent for the scaled restart), 1024 float64 and the
batch again with ``check_rank=False`` (descent, then refinement), and the batch with the rank
check at the start (``True``). One process; invert() and the bare steps alternate, each
repeated; the median ratio and its spread (min to max) are printed. The ideal counts the
steps the call took: a call that skips descent is measured against fewer steps.
"floor / ideal" prices the refinement steps as what they are, a correction accumulated in the
wide dtype and an update (``refine_counted``: the steps alone, no checks; the first correction
is the last check's product, as in ``invert()``): the least ``invert()`` could take with the
same steps and the same accuracy. "spectrum / ideal" prices what the tuner needs before the
first step, σ_max (``operator_sigma_max``: the Gram matrix's eigenvalues, its squarings or power
iteration, by the route ``invert()`` takes), or where the rank check ran, its singular values
(``wide_svdvals``), which give σ_max: floor + spectrum is the least ``invert()`` could take
with the same steps, the same accuracy and the same learning rate.
"""

import argparse
import statistics
import time

import torch

from gdinv_modules import conditioned_matrix, invert
from gdinv_modules.core.decomposition import wide_svdvals
from gdinv_modules.core.spectral import operator_sigma_max
from gdinv_modules.engine.refinement import refine_counted


def bare_steps(matrix: torch.Tensor, steps: int) -> float:
    """Seconds for ``steps`` bare heavy-ball steps on ``matrix``."""
    inverse, velocity = torch.zeros_like(matrix.mT), torch.zeros_like(matrix.mT)
    start = time.perf_counter()
    for _ in range(steps):
        error = inverse @ matrix
        error.diagonal(dim1=-2, dim2=-1).sub_(1)
        velocity.mul_(0.5).add_(error @ matrix.mH)
        inverse.sub_(1e-3 * velocity)
    return time.perf_counter() - start


def bare_refinement_steps(matrix: torch.Tensor, inverse: torch.Tensor, steps: int) -> float:
    """Seconds for ``steps`` bare refinement steps from ``inverse``: ``refine_counted``, the
    wide copy of M, then per step X + C X and the next correction C = I - XM (accumulated in
    the wide dtype), with no norm, no check and no host sync. The first correction is not
    timed: ``invert()`` takes it from the last check's product."""
    first = torch.eye(matrix.shape[-1], dtype=matrix.dtype) - inverse @ matrix
    start = time.perf_counter()
    refine_counted(inverse, matrix, steps, first)
    return time.perf_counter() - start


def spectrum(matrix: torch.Tensor, checked: bool) -> float:
    """Seconds for what the tuner needs before the first step (module docstring); ``checked``:
    the rank check ran."""
    start = time.perf_counter()
    if checked:
        wide_svdvals(matrix)
    else:
        operator_sigma_max(matrix)
    return time.perf_counter() - start


def case(name: str, matrix: torch.Tensor, repeats: int, **options) -> None:
    result = invert(matrix, **options)  # warm-up, and the step counts
    descent, refinement = result.report.steps, result.report.refine_steps
    checked = result.report.sigma_min[0] is not None  # the rank check's singular values
    rough = result.inverse * 0.999  # refinement's start, near where descent leaves X
    ratios, floors, spectra, ours = [], [], [], []
    for _ in range(repeats):
        began = time.perf_counter()
        invert(matrix, **options)
        seconds = time.perf_counter() - began
        ideal = bare_steps(matrix, descent + refinement)
        floor = bare_steps(matrix, descent) + bare_refinement_steps(matrix, rough, refinement)
        ratios.append(seconds / ideal)
        floors.append(floor / ideal)
        spectra.append(spectrum(matrix, checked) / ideal)
        ours.append(seconds)
    print(
        f"| {name} | {descent} + {refinement} | "
        f"{1e3 * statistics.median(ours):.0f} ms | {statistics.median(ratios):.2f} | "
        f"{min(ratios):.2f} to {max(ratios):.2f} | {statistics.median(floors):.2f} | "
        f"{statistics.median(spectra):.2f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| case | steps (descent + refinement) | invert() | time / ideal | spread | floor / ideal "
        "| spectrum / ideal |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    f64, f32 = torch.float64, torch.float32
    case("3 x 512 float64", conditioned_matrix(512, condition=2.25, batch_shape=(3,),
         dtype=f64), args.repeats)  # fmt: skip
    big = conditioned_matrix(1024, condition=2.25, dtype=f64)
    case("1024 float64", big, args.repeats)
    small = conditioned_matrix(64, condition=2.25, batch_shape=(64,), dtype=f32)
    case("64 x 64x64 float32", small, args.repeats)
    case("1024 float64, check_rank=False", big, args.repeats, check_rank=False)
    case("64 x 64x64 float32, check_rank=False", small, args.repeats, check_rank=False)
    case("64 x 64x64 float32, check_rank=True", small, args.repeats, check_rank=True)


if __name__ == "__main__":
    main()
