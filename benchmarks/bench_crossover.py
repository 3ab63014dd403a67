"""Which route to σ_max costs least on the CPU (``spectral.sigma_max_route``, fitted on 2 cores;
the GPU machines have 16).

    python benchmarks/bench_crossover.py [--repeats 7] [--cases 16:1 64:4] [--dtypes float64]
        [--device cpu]

For each batch shape, dtype and case ``iterations:starts`` (the callers' pairs: the tracker's
16 iterations from one row, the tuner's 64 from four): the Gram matrices' eigenvalues
(``gram_sigma_max``), the squarings (``squaring_spectral_norm``) and power iteration on rows
(``power_spectral_norm``) take turns in one process, each repeated, all in M's dtype as
``spectral_norm`` runs them; printed are the median milliseconds of each (min to max), which
is fastest, and which one the rule picks, with the cost of its pick against the fastest where
they differ. A pick far above 1 says the constants are off for this host. With ``--device
cuda`` the same on the GPU, where the rule always picks rows (the squarings there are what this
measures).
"""

import argparse
import functools
import itertools
import json
import statistics
import time

import torch

from gdinv_modules.core.decomposition import gram_sigma_max
from gdinv_modules.core.spectral import (
    power_spectral_norm,
    sigma_max_route,
    squaring_spectral_norm,
)

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
    (16, 128),
    (4, 256),
    (1, 512),
    (1, 1024),
]


def millis(function, device: torch.device) -> float:
    """Milliseconds for one call of ``function()``, to the end of its work on ``device``."""
    began = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cases", nargs="+", default=["16:1", "64:4"], help="iterations:starts")
    parser.add_argument("--dtypes", nargs="+", default=["float64"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch threads: {torch.get_num_threads()}, device: {device}")
    rows = []
    cases = [tuple(int(part) for part in case.split(":")) for case in args.cases]
    for dtype_name, (batch, n), (iterations, starts) in itertools.product(
        args.dtypes, SHAPES, cases
    ):
        matrix = torch.randn(batch, n, n, dtype=getattr(torch, dtype_name), device=device)
        routes = {
            "gram": functools.partial(gram_sigma_max, matrix),
            "squaring": functools.partial(squaring_spectral_norm, matrix, iterations=iterations),
            "rows": functools.partial(
                power_spectral_norm, matrix, iterations=iterations, starts=starts
            ),
        }
        times = {route: [] for route in routes}
        for function in routes.values():  # warm
            function()
        for _ in range(args.repeats):  # take turns
            for route, function in routes.items():
                times[route].append(millis(function, device))
        medians = {route: statistics.median(spread) for route, spread in times.items()}
        fastest = min(medians, key=medians.__getitem__)
        pick = sigma_max_route(matrix, iterations, starts)
        cost = medians[pick] / medians[fastest]
        rows.append(
            dict(
                dtype=dtype_name,
                batch=batch,
                n=n,
                iterations=iterations,
                starts=starts,
                ms=medians,
                spread={route: [min(spread), max(spread)] for route, spread in times.items()},
                rule=pick,
                fastest=fastest,
            )
        )
        print(
            f"{dtype_name} {batch:5d} x {n:4d}  it={iterations:3d}:{starts}  "
            + "  ".join(
                f"{route} {medians[route]:8.3f} ({min(spread):.3f}-{max(spread):.3f})"
                for route, spread in times.items()
            )
            + f"  fastest {fastest:8s} rule {pick:8s}"
            + ("  ok" if pick == fastest else f"  OFF x{cost:.2f}"),
            flush=True,
        )
    if args.output:
        with open(args.output, "w") as file:
            json.dump(
                dict(threads=torch.get_num_threads(), device=str(device), rows=rows), file, indent=1
            )


if __name__ == "__main__":
    main()
