"""``ImplicitMetaGradientModule``: a stateful ``nn.Module`` shell over the functional core.

After the user's ``solve(*data)`` has run any inner loop, the module's inner parameters are
replaced by tensors carrying implicit derivatives (``attach``, the rule behind
``implicit_root``) with respect to the meta-parameters and the data. The optimality condition
is evaluated on a structural snapshot with ``torch.func.functional_call`` (see ``functional.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .._linear.adapter import as_linear_solver
from .._linear.base import LinearSolveArg, LinearSolverBase
from . import attributes, solve_step, state
from . import functional as _functional
from .contract import ImplicitModuleType, defines, placeholder
from .functional import Functional as Functional

__all__ = ["Functional", "ImplicitMetaGradientModule"]

_METHODS = ("objective", "optimality", "solve")


class ImplicitMetaGradientModule(nn.Module, metaclass=ImplicitModuleType):
    """An ``nn.Module`` whose inner parameters, once fitted, carry implicit meta-gradients.

    Subclass it and define:

    - ``__init__(self, ...)``: call ``super().__init__()`` (no arguments). Tensors that
      require grad and modules (in any mode, nested in tuples, lists or dicts too) passed to
      the constructor and assigned to attributes are *meta-parameters* and *meta-modules*;
      a dict or list of them is registered leaf by leaf. Parameters and submodules the
      constructor creates are the *inner parameters*: ``parameters()`` yields only these
      (those with ``requires_grad=False`` are held fixed, like buffers).
      ``register_meta_parameter`` registers a meta-parameter explicitly.
    - ``objective(self, *data)``: a scalar loss of the inner parameters, or
      ``optimality(self, *data)``: a residual zero at the inner solution, one tensor per
      inner parameter (a tuple in ``parameters()`` order, or a dict keyed by name). Without
      ``optimality``, it is the gradient of ``objective``. Both receive the arguments of
      ``solve``, keywords included.
    - ``solve(self, *data)``: any inner loop that fits the inner parameters in place (a
      ``torch.optim`` optimizer over ``self.parameters()``, a closed form, ``fi.minimize`` on
      :meth:`functional`). Meta-parameters are detached while it runs, so ``loss.backward()``
      inside it never touches their ``.grad``.

    After ``solve(*data)`` the inner parameters hold the solution ``theta*``, differentiable
    in the meta-parameters and in tensors of ``data`` that require grad:
    ``d theta*/d phi = -A^{-1} B`` with ``A = dT/dtheta``, ``B = dT/dphi`` for the optimality
    ``T``, applied with one linear solve per backward pass. The linear solver is set per class,
    ``class Inner(fi.nn.ImplicitMetaGradientModule, solve=fi.CG(maxiter=20))``, or per
    instance, ``module.linear_solver = fi.GMRES()``; the default is ``fi.Auto(symmetric=True)``
    (dense Cholesky while small, CG beyond) when the optimality is derived from an objective
    (a symmetric Hessian) and ``fi.Auto()`` (dense LU, GMRES beyond) otherwise.

    Examples:
        >>> import torch, funcimplicit as fi
        >>> class Ridge(fi.nn.ImplicitMetaGradientModule, solve=fi.CG()):
        ...     def __init__(self, lam):
        ...         super().__init__()
        ...         self.lam = lam  # passed in: a meta-parameter
        ...         self.w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        ...
        ...     def objective(self, X, y):
        ...         return 0.5 * ((X @ self.w - y) ** 2).sum() + 0.5 * self.lam * self.w @ self.w
        ...
        ...     def solve(self, X, y):
        ...         optimizer = torch.optim.LBFGS(self.parameters(), line_search_fn="strong_wolfe")
        ...
        ...         def closure():
        ...             optimizer.zero_grad()
        ...             loss = self.objective(X, y)
        ...             loss.backward()
        ...             return loss
        ...
        ...         optimizer.step(closure)
        >>> lam = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        >>> model = Ridge(lam)
        >>> X, y = torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
        >>> model.solve(X, y)
        >>> model.w.sum().backward()  # w* = y / (1 + lam): d(sum w*)/dlam = -2 / 4
        >>> round(float(lam.grad), 6)
        -0.5
    """

    #: The linear solver of the implicit derivative (``None``: chosen by kind, see above).
    linear_solver: LinearSolverBase | None = None
    _meta: state.MetaParameters  # set before __init__ runs, by the metaclass

    def __init_subclass__(cls, *, solve: LinearSolveArg = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if solve is not None:
            cls.linear_solver = as_linear_solver(solve, f"class {cls.__name__}(..., solve=...)")
        for name in _METHODS:
            state.check_method_kind(cls, name)
        if "solve" in cls.__dict__:
            cls.solve = solve_step.implicit_solve(cls.__dict__["solve"])  # type: ignore[method-assign]

    def __init__(self) -> None:
        super().__init__()

    # ----------------------------------------------------------------- methods to define

    @placeholder
    def objective(self, *data: Any, **kwargs: Any) -> torch.Tensor:
        """The inner loss: a scalar tensor of the inner (and meta-) parameters. Define it, or
        :meth:`optimality`.

        Examples:
            >>> import torch, funcimplicit as fi
            >>> class Mean(fi.nn.ImplicitMetaGradientModule):
            ...     def __init__(self, target):
            ...         super().__init__()
            ...         self.target = target
            ...         self.x = torch.nn.Parameter(torch.zeros(()))
            ...
            ...     def objective(self):
            ...         return (self.x - self.target) ** 2
            ...
            ...     def solve(self):
            ...         with torch.no_grad():
            ...             self.x.copy_(self.target)
            >>> Mean(torch.tensor(3.0, requires_grad=True)).objective().detach()
            tensor(9.)
        """
        raise NotImplementedError(f"{type(self).__name__} defines optimality(), not objective().")

    @placeholder
    def optimality(self, *data: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        """The optimality residual ``T``: zero at the inner solution, one tensor per inner
        parameter that requires grad, in ``parameters()`` order (or a dict keyed by name). By
        default the gradient of :meth:`objective` in the inner parameters (stationarity).

        Examples:
            >>> import torch, funcimplicit as fi
            >>> class Mean(fi.nn.ImplicitMetaGradientModule):
            ...     def __init__(self, target):
            ...         super().__init__()
            ...         self.target = target
            ...         self.x = torch.nn.Parameter(torch.zeros(()))
            ...
            ...     def objective(self):
            ...         return (self.x - self.target) ** 2
            ...
            ...     def solve(self):
            ...         pass
            >>> (residual,) = Mean(torch.tensor(3.0, requires_grad=True)).optimality()
            >>> residual.detach()  # 2 (x - target) at x = 0
            tensor(-6.)
        """
        f = self.functional()
        residual = f.optimality(f.inner, f.meta, *data, **kwargs)
        return tuple(residual[name] for name in f.inner)

    @placeholder
    def solve(self, *data: Any, **kwargs: Any) -> Any:
        """Fit the inner parameters in place by any inner loop; its return value is passed
        through. After it returns, the inner parameters carry implicit derivatives.

        Examples:
            >>> import torch, funcimplicit as fi
            >>> class Mean(fi.nn.ImplicitMetaGradientModule):
            ...     def __init__(self, target):
            ...         super().__init__()
            ...         self.target = target
            ...         self.x = torch.nn.Parameter(torch.zeros(()))
            ...
            ...     def objective(self):
            ...         return (self.x - self.target) ** 2
            ...
            ...     def solve(self):
            ...         optimizer = torch.optim.SGD(self.parameters(), lr=0.25)
            ...         for _ in range(100):
            ...             optimizer.zero_grad()
            ...             self.objective().backward()
            ...             optimizer.step()
            >>> target = torch.tensor(3.0, requires_grad=True)
            >>> model = Mean(target)
            >>> model.solve()
            >>> (2 * model.x).backward()  # x* = target
            >>> target.grad
            tensor(2.)
        """
        raise NotImplementedError(f"{type(self).__name__} does not define solve().")

    # ------------------------------------------------------------ meta-parameter registry

    def register_meta_parameter(self, name: str, tensor: torch.Tensor) -> None:
        """Register ``tensor`` as the meta-parameter ``name`` (an attribute of the module).

        Any floating-point tensor may be registered; only those that require grad receive
        gradients. The tensor is kept as it is (not converted to ``nn.Parameter``).

        Examples:
            >>> import torch, funcimplicit as fi
            >>> class Shift(fi.nn.ImplicitMetaGradientModule):
            ...     def __init__(self, offsets):
            ...         super().__init__()
            ...         self.register_meta_parameter("offset", offsets[0])
            ...         self.x = torch.nn.Parameter(torch.zeros(()))
            ...
            ...     def objective(self):
            ...         return (self.x - self.offset) ** 2
            ...
            ...     def solve(self):
            ...         pass
            >>> [name for name, _ in Shift([torch.tensor(1.0)]).named_meta_parameters()]
            ['offset']
        """
        call = f"{type(self).__name__}.register_meta_parameter({name!r}, ...)"
        attributes.check_name(self, name, call)
        if not isinstance(tensor, torch.Tensor) or not tensor.dtype.is_floating_point:
            got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TypeError(f"{call}: expected a floating-point tensor; received {got}.")
        attributes.forget(self, name)
        state.put(self._meta._parameters, name, tensor)

    def register_meta_module(self, name: str, module: nn.Module) -> None:
        """Register ``module`` as the meta-module ``name``: its parameters are meta-parameters
        (whatever its ``training`` mode), and ``parameters()`` does not list them.

        Examples:
            >>> import torch, funcimplicit as fi
            >>> class Head(fi.nn.ImplicitMetaGradientModule):
            ...     def __init__(self, body):
            ...         super().__init__()
            ...         self.register_meta_module("body", body)
            ...         self.w = torch.nn.Parameter(torch.zeros(2))
            ...
            ...     def objective(self, x):
            ...         return (self.body(x) @ self.w).sum() + self.w @ self.w
            ...
            ...     def solve(self, x):
            ...         pass
            >>> head = Head(torch.nn.Linear(3, 2))
            >>> [name for name, _ in head.named_meta_parameters()]
            ['body.weight', 'body.bias']
            >>> [name for name, _ in head.named_parameters()]
            ['w']
        """
        call = f"{type(self).__name__}.register_meta_module({name!r}, ...)"
        attributes.check_name(self, name, call)
        if not isinstance(module, nn.Module):
            raise TypeError(f"{call}: expected an nn.Module; received {type(module).__name__}.")
        attributes.forget(self, name)
        self._meta._modules[name] = module

    def named_meta_parameters(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` for each meta-parameter: registered tensors, leaves of registered
        pytrees (``hyper.lam``) and parameters of meta-modules (``net.weight``).

        Examples:
            >>> import torch, funcimplicit as fi
            >>> class Fit(fi.nn.ImplicitMetaGradientModule):
            ...     def __init__(self, hyper):
            ...         super().__init__()
            ...         self.hyper = hyper  # a dict of meta-parameters
            ...         self.x = torch.nn.Parameter(torch.zeros(()))
            ...
            ...     def objective(self):
            ...         return self.hyper["scale"] * (self.x - self.hyper["shift"]) ** 2
            ...
            ...     def solve(self):
            ...         pass
            >>> hyper = {"shift": torch.tensor(1.0, requires_grad=True),
            ...          "scale": torch.tensor(2.0, requires_grad=True)}
            >>> [name for name, _ in Fit(hyper).named_meta_parameters()]
            ['hyper.scale', 'hyper.shift']
        """
        meta: state.MetaParameters = self._meta
        return meta.named_parameters(prefix=prefix, recurse=recurse)

    def meta_parameters(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        """The meta-parameters (see :meth:`named_meta_parameters`), in the same order.

        Examples:
            >>> import torch, funcimplicit as fi
            >>> class Mean(fi.nn.ImplicitMetaGradientModule):
            ...     def __init__(self, target):
            ...         super().__init__()
            ...         self.target = target
            ...         self.x = torch.nn.Parameter(torch.zeros(()))
            ...
            ...     def objective(self):
            ...         return (self.x - self.target) ** 2
            ...
            ...     def solve(self):
            ...         pass
            >>> target = torch.tensor(3.0, requires_grad=True)
            >>> [p is target for p in Mean(target).meta_parameters()]
            [True]
        """
        for _, tensor in self.named_meta_parameters(recurse=recurse):
            yield tensor

    def meta_modules(self) -> Iterator[nn.Module]:
        """Every meta-module and its submodules (each once).

        Examples:
            >>> import torch, funcimplicit as fi
            >>> class Head(fi.nn.ImplicitMetaGradientModule):
            ...     def __init__(self, body):
            ...         super().__init__()
            ...         self.body = body  # passed in: a meta-module, even in eval() mode
            ...         self.w = torch.nn.Parameter(torch.zeros(2))
            ...
            ...     def objective(self, x):
            ...         return (self.body(x) @ self.w).sum() + self.w @ self.w
            ...
            ...     def solve(self, x):
            ...         pass
            >>> body = torch.nn.Sequential(torch.nn.Linear(3, 2)).eval()
            >>> [type(m).__name__ for m in Head(body).meta_modules()]
            ['Sequential', 'Linear']
        """
        seen: set[int] = set()
        for child in self._meta.modules():
            if isinstance(child, state.MetaParameters | state.TreeNode) or id(child) in seen:
                continue
            for module in child.modules():
                if id(module) not in seen:
                    seen.add(id(module))
                    yield module

    # ---------------------------------------------------------------- functional bridge

    def functional(self) -> Functional:
        """The module as pure functions of parameter dicts, for ``torch.func`` transforms.

        Returns a :class:`Functional` ``(objective, inner, meta, optimality, forward)``:
        ``objective(inner, meta, *data)`` and ``optimality(inner, meta, *data)`` evaluate the
        module's methods with the given tensors (the module itself is not modified), ``inner``
        and ``meta`` hold the current parameters by name. The functions keep no reference to
        the module and read its structure as it is now. Use them with ``fi.minimize`` or
        ``fi.implicit_root`` under ``torch.func.vmap`` to get per-task meta-gradients.

        Examples:
            >>> import torch, funcimplicit as fi
            >>> class Ridge(fi.nn.ImplicitMetaGradientModule):
            ...     def __init__(self, lam):
            ...         super().__init__()
            ...         self.lam = lam
            ...         self.w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
            ...
            ...     def objective(self, X, y):
            ...         residual = X @ self.w - y
            ...         return 0.5 * residual @ residual + 0.5 * self.lam * self.w @ self.w
            ...
            ...     def solve(self, X, y):
            ...         pass
            >>> f = Ridge(torch.tensor(1.0, dtype=torch.float64, requires_grad=True)).functional()
            >>> def meta_loss(meta, X, y):  # one task
            ...     return fi.minimize(f.objective, f.inner, meta, X, y).value["w"].sum()
            >>> X = torch.eye(2, dtype=torch.float64).expand(3, 2, 2)  # three tasks
            >>> y = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)[:, None].expand(3, 2)
            >>> grads = torch.func.vmap(torch.func.grad(meta_loss), (None, 0, 0))(f.meta, X, y)
            >>> grads["lam"].detach()  # w* = y / (1 + lam): d(sum w*)/dlam = -2 y / 4
            tensor([-0.5000, -1.0000, -1.5000], dtype=torch.float64)
        """
        cls = type(self)
        return _functional.functional(
            self, defines(cls, "objective"), not defines(cls, "optimality")
        )

    # ------------------------------------------------------------ the solve step, attributes

    def _solve_implicitly(
        self, raw: Callable[..., Any], data: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        derived = not defines(type(self), "optimality")
        solver = self.linear_solver
        return solve_step.solve_implicitly(
            self, self._meta, raw, data, kwargs, derived=derived, solver=solver
        )

    def __getattr__(self, name: str) -> Any:
        value = attributes.get_meta(self, name)
        return super().__getattr__(name) if value is attributes.MISSING else value

    def __setattr__(self, name: str, value: Any) -> None:
        attributes.set_attribute(self, name, value, super().__setattr__)

    def __delattr__(self, name: str) -> None:
        if not attributes.delete_meta(self, name):
            super().__delattr__(name)
