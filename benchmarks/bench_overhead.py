"""``invert()`` against its ideal: (descent steps + refinement steps) x one bare step, where a
bare step is the two matrix products and the momentum update, nothing else.

    python benchmarks/bench_overhead.py [--repeats 5]

The cases of issue 19 (condition number 2.25): 3 x 512 and 1024 float64, 64 x 64x64 float32,
and 1024 float64 and the batch again with ``check_rank=False``. One process; invert() and the
bare steps alternate, each repeated; the median ratio and its spread (min to max) are printed.
"""

import argparse
import statistics
import time

import torch

from gdinv_modules import conditioned_matrix, invert


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


def case(name: str, matrix: torch.Tensor, repeats: int, **options) -> None:
    result = invert(matrix, **options)  # warm-up, and the step counts
    steps = result.report.steps + result.report.refine_steps
    ratios, ours = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        invert(matrix, **options)
        seconds = time.perf_counter() - began
        ideal = bare_steps(matrix, steps)
        ratios.append(seconds / ideal)
        ours.append(seconds)
    print(
        f"| {name} | {result.report.steps} + {result.report.refine_steps} | "
        f"{1e3 * statistics.median(ours):.0f} ms | {statistics.median(ratios):.2f} | "
        f"{min(ratios):.2f} to {max(ratios):.2f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| case | steps (descent + refinement) | invert() | time / ideal | spread |")
    print("| --- | --- | --- | --- | --- |")
    f64, f32 = torch.float64, torch.float32
    case("3 x 512 float64", conditioned_matrix(512, condition=2.25, batch_shape=(3,),
         dtype=f64), args.repeats)  # fmt: skip
    big = conditioned_matrix(1024, condition=2.25, dtype=f64)
    case("1024 float64", big, args.repeats)
    small = conditioned_matrix(64, condition=2.25, batch_shape=(64,), dtype=f32)
    case("64 x 64x64 float32", small, args.repeats)
    case("1024 float64, check_rank=False", big, args.repeats, check_rank=False)
    case("64 x 64x64 float32, check_rank=False", small, args.repeats, check_rank=False)


if __name__ == "__main__":
    main()
