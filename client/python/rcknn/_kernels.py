"""Kernels k(x, y) = variance * f(||(x - y) / lengthscale||) (docs/design.md section 2)."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

Lengthscale = Union[float, Sequence[float], np.ndarray]


class Kernel:
    """Base of the four kernels. `lengthscale` is a scalar (isotropic) or one value per
    dimension (ARD); the server checks both against the points' dimension."""

    _type_name = ""

    def __init__(self, variance: float = 1.0, lengthscale: Lengthscale = 1.0):
        self.variance = float(variance)
        scales = np.asarray(lengthscale, dtype=np.float64)
        if scales.ndim > 1:
            raise ValueError("lengthscale: give a scalar or one value per dimension")
        self.lengthscales = [float(v) for v in scales.reshape(-1)]

    def __repr__(self) -> str:
        scale = self.lengthscales[0] if len(self.lengthscales) == 1 else self.lengthscales
        return f"rcknn.{type(self).__name__}(variance={self.variance}, lengthscale={scale})"

    def __eq__(self, other: object) -> bool:
        return (type(self) is type(other) and self.variance == other.variance  # type: ignore
                and self.lengthscales == other.lengthscales)  # type: ignore

    def to_proto(self, pb2):  # pylint: disable=missing-function-docstring
        return pb2.KernelSpec(type=pb2.KernelType.Value(self._type_name),
                              variance=self.variance, lengthscales=self.lengthscales)


class RBF(Kernel):
    """Squared exponential: f(r) = exp(-r^2 / 2)."""
    _type_name = "KERNEL_RBF"


class Matern12(Kernel):
    """Matern 1/2 (exponential): f(r) = exp(-r)."""
    _type_name = "KERNEL_MATERN12"


class Matern32(Kernel):
    """Matern 3/2: f(r) = (1 + sqrt3 r) exp(-sqrt3 r)."""
    _type_name = "KERNEL_MATERN32"


class Matern52(Kernel):
    """Matern 5/2: f(r) = (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r)."""
    _type_name = "KERNEL_MATERN52"
