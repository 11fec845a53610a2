"""Linear solvers: the shared base, one module per solver, and the adapter for user solvers."""
