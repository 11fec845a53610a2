"""Core utilities every layer uses: pytrees, loops, checks, function transforms, results.

Layers, from the top: ``_nn`` and ``_inner`` import ``_rules``, which imports ``_linear``,
which imports ``_core``. Nothing imports upward.
"""
