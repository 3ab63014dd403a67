"""Where σ_max from the Gram matrices' eigenvalues stops paying against power iteration, on
the CPU (``theory.gram_costs_less``, fitted on 2 cores; the GPU machines have 16).

    python benchmarks/bench_crossover.py [--repeats 7] [--iterations 16 64]

For each batch shape, float64 (the wide dtype both run in): ``wide_sigma_max`` and
``power_spectral_norm`` alternate in one process, each repeated; printed are the median
milliseconds (min to max), the ratio eigenvalues / power iteration, and which one
``spectral_norm``'s rule picks. A ratio below 1 where the rule picks power iteration, or above
1 where it picks the eigenvalues, says the constant is off for this host.
"""

import argparse
import json
import statistics
import time

import torch

from gdinv_modules.core.decomposition import wide_sigma_max
from gdinv_modules.core.theory import gram_costs_less, power_spectral_norm

SHAPES = [
    (1, 16),
    (1, 64),
    (1, 128),
    (1, 256),
    (8, 64),
    (16, 64),
    (64, 64),
    (256, 64),
    (1024, 32),
    (1, 512),
    (1, 1024),
]


def millis(function, *args, **kwargs) -> float:
    """Milliseconds for one call of ``function(*args, **kwargs)``."""
    began = time.perf_counter()
    function(*args, **kwargs)
    return 1e3 * (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iterations", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    rows = []
    for batch, n in SHAPES:
        matrix = torch.randn(batch, n, n, dtype=torch.float64)
        for iterations in args.iterations:
            gram, power = [], []
            wide_sigma_max(matrix), power_spectral_norm(matrix, iterations=iterations)  # warm
            for _ in range(args.repeats):  # alternate A and B
                gram.append(millis(wide_sigma_max, matrix))
                power.append(millis(power_spectral_norm, matrix, iterations=iterations))
            rule = "gram" if gram_costs_less(matrix, iterations) else "power"
            g, p = statistics.median(gram), statistics.median(power)
            faster = "gram" if g < p else "power"
            row = dict(
                batch=batch,
                n=n,
                iterations=iterations,
                gram_ms=g,
                power_ms=p,
                gram_spread=[min(gram), max(gram)],
                power_spread=[min(power), max(power)],
                rule=rule,
                faster=faster,
            )
            rows.append(row)
            print(
                f"{batch:5d} x {n:4d}  it={iterations:3d}  gram {g:8.3f} ms "
                f"({min(gram):.3f}-{max(gram):.3f})  power {p:8.3f} ms "
                f"({min(power):.3f}-{max(power):.3f})  ratio {g / p:6.2f}  rule {rule:5s}"
                f"  {'ok' if rule == faster else 'OFF'}",
                flush=True,
            )
    if args.output:
        with open(args.output, "w") as file:
            json.dump(dict(threads=torch.get_num_threads(), rows=rows), file, indent=1)


if __name__ == "__main__":
    main()
