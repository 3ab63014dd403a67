"""The math: pure functions on tensors (the product, loss, gradient, residual), the formulation,
the largest singular value, the convergence theory, ranks, the report, test matrices, and the
named errors. Imports torch only."""
