"""Inner methods (one module per method family) and the inner solvers that run them."""
