"""``funcimplicit.nn``: stateful modules whose fitted parameters carry implicit meta-gradients.

A thin shell over the functional core (``torch.func.functional_call`` and the implicit rule of
:func:`funcimplicit.implicit_root`), for code organized as ``nn.Module`` s. A TorchOpt user ports
``torchopt.nn.ImplicitMetaGradientModule`` by changing the import and the ``linear_solve=`` class
keyword to ``solve=`` (see ``docs/nn.md``).
"""

from ._nn.module import Functional as Functional
from ._nn.module import ImplicitMetaGradientModule as ImplicitMetaGradientModule

__all__ = ["Functional", "ImplicitMetaGradientModule"]
