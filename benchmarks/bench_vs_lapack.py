"""When to use the library: ``invert()`` against ``torch.linalg.inv`` for a one-off inverse,
and the steps of a cold start by heavy ball against Newton-Schulz from the safe start.

    python benchmarks/bench_vs_lapack.py [--repeats 5]

Timing: one process, the two calls alternated (A B A B ...), each repeated; it prints the
median ratio and its spread (min to max of the per-pair ratios). Steps are deterministic.
"""

import argparse
import statistics
import time
import warnings

import torch

from gdinv_modules import conditioned_matrix, invert
from gdinv_modules.engine.refinement import refine


def seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def time_ratio(matrix: torch.Tensor, repeats: int) -> dict:
    invert(matrix)  # warm-up: first-call costs are not the steady state
    torch.linalg.inv(matrix)
    pairs = []
    for _ in range(repeats):
        lapack = seconds(lambda: torch.linalg.inv(matrix))
        ours = seconds(lambda: invert(matrix))
        pairs.append((ours, lapack))
    ratios = [ours / lapack for ours, lapack in pairs]
    return {
        "invert_ms": 1e3 * statistics.median(o for o, _ in pairs),
        "inv_ms": 1e3 * statistics.median(lapack for _, lapack in pairs),
        "ratio": statistics.median(ratios),
        "spread": (min(ratios), max(ratios)),
    }


def cold_start_steps(n: int, kappa: float) -> dict:
    matrix = conditioned_matrix(n, condition=kappa, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        descent = invert(matrix, refine=False)
    newton_schulz = refine(torch.zeros_like(matrix), matrix)  # restarts from the safe start
    return {
        "heavy_ball_steps": descent.report.steps,
        "newton_schulz_steps": newton_schulz.steps,
        "ratio": descent.report.steps / max(newton_schulz.steps, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| M | invert() ms | linalg.inv ms | ratio (median) | spread |")
    print("| --- | --- | --- | --- | --- |")
    for n, dtype in ((64, torch.float64), (256, torch.float64), (1024, torch.float64),
                     (256, torch.float32), (1024, torch.float32)):  # fmt: skip
        matrix = conditioned_matrix(n, condition=100.0, dtype=dtype)
        row = time_ratio(matrix, args.repeats if n < 1024 else max(2, args.repeats // 2))
        low, high = row["spread"]
        name = f"{n} x {n} {str(dtype).replace('torch.', '')}, kappa 100"
        print(
            f"| {name} | {row['invert_ms']:.3g} | {row['inv_ms']:.3g} | {row['ratio']:.0f}x | "
            f"{low:.0f}x to {high:.0f}x |"
        )
    print()
    print("| kappa (n = 64, float64, tol 1e-10) | heavy ball, cold | Newton-Schulz, safe start |"
          " ratio |")  # fmt: skip
    print("| --- | --- | --- | --- |")
    for kappa in (10.0, 100.0, 1000.0, 10000.0):
        row = cold_start_steps(64, kappa)
        print(
            f"| {kappa:g} | {row['heavy_ball_steps']} | {row['newton_schulz_steps']} | "
            f"{row['ratio']:.0f}x |"
        )


if __name__ == "__main__":
    main()
