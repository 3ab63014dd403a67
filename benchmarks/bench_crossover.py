"""Where σ_max from the Gram matrices' eigenvalues stops paying against power iteration, on
the CPU (``theory.gram_costs_less``, fitted on 2 cores; the GPU machines have 16).

    python benchmarks/bench_crossover.py [--repeats 7] [--cases 16:1 64:4] [--dtypes float64]

For each batch shape, dtype and case ``iterations:starts`` (the callers' pairs: the tracker's
16 iterations from one row, the tuner's 64 from four): ``gram_sigma_max`` and
``power_spectral_norm`` alternate in one process, each repeated, both in M's dtype as
``spectral_norm`` runs them; printed are the median milliseconds (min to max), the ratio
eigenvalues / power iteration, and which one ``spectral_norm``'s rule picks. A ratio below 1 where the rule picks power iteration, or above
1 where it picks the eigenvalues, says the constant is off for this host.
"""

import argparse
import itertools
import json
import statistics
import time

import torch

from gdinv_modules.core.decomposition import gram_sigma_max
from gdinv_modules.core.theory import gram_costs_less, power_spectral_norm

SHAPES = [
    (1, 16),
    (1, 32),
    (1, 64),
    (1, 128),
    (1, 256),
    (8, 64),
    (16, 64),
    (64, 64),
    (256, 64),
    (64, 32),
    (256, 32),
    (1024, 32),
    (256, 16),
    (1024, 16),
    (4096, 16),
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
    parser.add_argument("--cases", nargs="+", default=["16:1", "64:4"], help="iterations:starts")
    parser.add_argument("--dtypes", nargs="+", default=["float64"])
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    rows = []
    cases = [tuple(int(part) for part in case.split(":")) for case in args.cases]
    for dtype_name, (batch, n), (iterations, starts) in itertools.product(
        args.dtypes, SHAPES, cases
    ):
        matrix = torch.randn(batch, n, n, dtype=getattr(torch, dtype_name))
        power_kwargs = dict(iterations=iterations, starts=starts)
        gram, power = [], []
        gram_sigma_max(matrix), power_spectral_norm(matrix, **power_kwargs)  # warm
        for _ in range(args.repeats):  # alternate A and B
            gram.append(millis(gram_sigma_max, matrix))
            power.append(millis(power_spectral_norm, matrix, **power_kwargs))
        rule = "gram" if gram_costs_less(matrix, iterations, starts) else "power"
        g, p = statistics.median(gram), statistics.median(power)
        faster = "gram" if g < p else "power"
        row = dict(
            dtype=dtype_name,
            batch=batch,
            n=n,
            iterations=iterations,
            starts=starts,
            gram_ms=g,
            power_ms=p,
            gram_spread=[min(gram), max(gram)],
            power_spread=[min(power), max(power)],
            rule=rule,
            faster=faster,
        )
        rows.append(row)
        print(
            f"{dtype_name} {batch:5d} x {n:4d}  it={iterations:3d}:{starts}  gram {g:8.3f} ms "
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
