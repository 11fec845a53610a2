"""Not tensor trees: a checker that read ``fi.TensorTree`` as ``Any`` would accept all of these."""

import torch

import funcimplicit as fi

text: fi.TensorTree = "abc"  # type: ignore[assignment]
number: fi.TensorTree = 1.0  # type: ignore[assignment]
floats: fi.TensorTree = [1.0, 2.0]  # type: ignore[list-item]
mapping: fi.TensorTree = {"a": 1}  # type: ignore[assignment]
raw: fi.TensorTree = b"abc"  # type: ignore[assignment]
mixed: fi.TensorTree = (torch.ones(1), "label")  # type: ignore[assignment]
fine: fi.TensorTree = {"a": (torch.ones(1), [torch.ones(2)])}
