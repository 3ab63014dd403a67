"""The math: pure functions on tensors (estimates of X, loss, gradient, residual), the
convergence theory, ranks, the report, test matrices, and the named errors. Imports torch only."""
