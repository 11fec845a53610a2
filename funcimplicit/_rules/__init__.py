"""The derivative rules: the implicit rule, ``linear_solve``, the decorators, hypergradients."""
