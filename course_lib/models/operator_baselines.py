"""The baselines a neural operator has to beat (notebook 27): one linear map, and the nearest training sample.

Both learn a map from a field to a field, u(0) -> u(t), on the training grid: `inputs` and `targets` (N, G) hold
the fields at the G equally spaced points 2πj/G of the periodic interval [0, 2π).
- `LinearOperator` fits one affine map u(t) ≈ W u(0) + b by (ridge) least squares. The heat and advection
  equations are linear, so it can be exact there; Burgers' equation is not.
- `NearestNeighbour` answers with the target of the training input closest to the given one (L2 distance).
Unlike a neural operator, neither reads coordinates: given the field at other points (another resolution, or
irregular points), `predict(inputs, points)` first brings it to the training grid (`interpolate_to_grid`: sort the
points by angle, interpolate linearly between neighbours, around the seam too), applies the map there, and brings
the answer back to the same points (`periodic_interpolate`). Their resolution transfer is this linear interpolation.
`relative_l2` is the metric notebook 27 reports: ‖prediction − target‖ / ‖target‖ per sample, averaged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LinearOperator", "NearestNeighbour", "interpolate_to_grid", "periodic_interpolate", "relative_l2"]

TAU = 2 * math.pi


def _check_fields(argument: str, values: object) -> None:
    if not isinstance(values, Tensor) or values.dim() != 2 or not values.is_floating_point() or 0 in values.shape:
        raise ValueError(f"{argument} has shape {tuple(getattr(values, 'shape', ()))} and dtype "
                         f"{getattr(values, 'dtype', type(values).__name__)}; expected a float (batch, points) tensor")


def _check_points(points: object, values: Tensor, argument: str = "values") -> Tensor:
    """`points` expanded to (batch, P), after checking it is (P,) or (batch, P) float, P matching `values` (B, P)."""
    batch, count = values.shape
    if not isinstance(points, Tensor) or not points.is_floating_point() \
            or points.shape not in ((count,), (batch, count)):
        raise ValueError(f"points has shape {tuple(getattr(points, 'shape', ()))}; expected float angles (P,) = "
                         f"({count},) or (batch, P) = ({batch}, {count}), one per point of {argument}")
    return points.expand(batch, count)


def _check_grid_size(grid_size: object) -> None:
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(f"grid_size={grid_size!r} must be a positive int")


def _grid(grid_size: int, like: Tensor) -> Tensor:
    """(grid_size,) angles 2πj/grid_size, computed as `course_lib.data.pde` computes its grids, so that they agree."""
    return torch.arange(grid_size, dtype=like.dtype, device=like.device) * 2 * math.pi / grid_size


def periodic_interpolate(values: Tensor, grid_size: int, points: Tensor) -> Tensor:
    """(B, grid_size) samples on the periodic grid 2πj/grid_size -> (B, P) linear interpolation at `points` (P,) or
    (B, P) angles; between the last grid point and 2π it interpolates towards the first (the seam). Angles outside
    [0, 2π) are taken modulo 2π."""
    _check_grid_size(grid_size)
    _check_fields("values", values)
    if values.shape[1] != grid_size:
        raise ValueError(f"values has {values.shape[1]} points per row; expected grid_size={grid_size}")
    if not isinstance(points, Tensor) or not points.is_floating_point() or points.dim() not in (1, 2) \
            or (points.dim() == 2 and len(points) != len(values)):
        raise ValueError(f"points has shape {tuple(getattr(points, 'shape', ()))}; expected float angles (P,) or "
                         f"(batch={len(values)}, P)")
    position = torch.remainder(points.to(values.dtype) * (grid_size / TAU), grid_size)  # in grid steps, [0, G)
    position = position.expand(len(values), -1)  # (B, P)
    lower = position.floor().long().clamp(max=grid_size - 1)
    fraction = position - lower
    left, right = values.gather(1, lower), values.gather(1, (lower + 1) % grid_size)
    return left + fraction * (right - left)


def interpolate_to_grid(values: Tensor, points: Tensor, grid_size: int) -> Tensor:
    """(B, P) samples at scattered `points` (P,) or (B, P) angles -> (B, grid_size) on the grid 2πj/grid_size: the
    points sorted by angle, each grid point interpolated linearly between the sampled points on either side of it,
    across the seam at 2π too. Exact where a grid point is a sampled point."""
    _check_grid_size(grid_size)
    _check_fields("values", values)
    count = values.shape[1]
    angles = torch.remainder(_check_points(points, values).to(values.dtype), TAU)  # (B, P)
    order = angles.argsort(dim=1)
    angles, values = angles.gather(1, order), values.gather(1, order)
    grid = _grid(grid_size, values).expand(len(values), -1).contiguous()  # (B, G)
    upper = torch.searchsorted(angles.contiguous(), grid, right=True)  # first sampled point after each grid point
    lower = upper - 1  # the last one at or before it; -1 and P wrap around the seam
    low_angle = angles.gather(1, lower % count) - TAU * (lower < 0).to(angles.dtype)
    high_angle = angles.gather(1, upper % count) + TAU * (upper >= count).to(angles.dtype)
    low, high = values.gather(1, lower % count), values.gather(1, upper % count)
    fraction = (grid - low_angle) / (high_angle - low_angle).clamp_min(torch.finfo(values.dtype).tiny)
    return low + fraction * (high - low)


def relative_l2(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch (dim 0) of ‖prediction − target‖ / ‖target‖, each norm over all other dims: the relative
    error of every sample counts the same, whatever its size."""
    if not isinstance(prediction, Tensor) or not isinstance(target, Tensor) or prediction.shape != target.shape \
            or target.dim() < 2 or len(target) == 0:
        raise ValueError(f"prediction {tuple(getattr(prediction, 'shape', ()))} and target "
                         f"{tuple(getattr(target, 'shape', ()))} must be tensors of one shape (batch >= 1, ...)")
    error = (prediction - target).flatten(1).norm(dim=1)
    return (error / target.flatten(1).norm(dim=1)).mean()


class _GridBaseline:
    """What both baselines share: the training grid, and predictions at any points through it."""

    grid_size: int | None = None

    def _check_pair(self, inputs: Tensor, targets: Tensor) -> None:
        _check_fields("inputs", inputs)
        _check_fields("targets", targets)
        if targets.shape != inputs.shape:
            raise ValueError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must have one shape: "
                             "(N, points) fields on the training grid")
        self.grid_size = inputs.shape[1]

    def _map(self, inputs: Tensor) -> Tensor:
        raise NotImplementedError

    def predict(self, inputs: Tensor, points: Tensor | None = None) -> Tensor:
        """(B, P) fields at `points` (P,) or (B, P) angles -> (B, P) predictions at the same points; without
        `points`, the fields lie on the training grid. Other points go through the training grid by linear
        interpolation (`interpolate_to_grid` in, `periodic_interpolate` out)."""
        if self.grid_size is None:
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit(inputs, targets) first")
        _check_fields("inputs", inputs)
        if points is None:
            if inputs.shape[1] != self.grid_size:
                raise ValueError(f"inputs has {inputs.shape[1]} points per row and no points= were given; expected "
                                 f"the training grid of {self.grid_size} points, or points= saying where they lie")
            return self._map(inputs)
        on_grid = interpolate_to_grid(inputs, points, self.grid_size)
        return periodic_interpolate(self._map(on_grid), self.grid_size, _check_points(points, inputs, "inputs"))


class LinearOperator(_GridBaseline):
    """u_out ≈ W u_in + b on the training grid, fitted by least squares (float64) with ridge·‖W‖² (b not penalised)
    added to the mean squared error. The small default keeps W off the directions where float32 rounding is all the
    inputs hold (fields of a few Fourier modes span few directions); `ridge=0` is plain minimum-norm least squares."""

    def __init__(self, *, ridge: float = 1e-6) -> None:
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not 0 <= ridge < math.inf:
            raise ValueError(f"ridge={ridge!r} must be a finite number >= 0")
        self.ridge = float(ridge)
        self.weight: Tensor | None = None  # (G, G): out = in @ weight + bias
        self.bias: Tensor | None = None  # (G,)

    def fit(self, inputs: Tensor, targets: Tensor) -> LinearOperator:
        """Fit on `inputs` and `targets` (N, G), both on the training grid of G points; returns self."""
        self._check_pair(inputs, targets)
        x, y = inputs.detach().double().cpu(), targets.detach().double().cpu()
        count, size = x.shape
        design = torch.cat([x, torch.ones(count, 1, dtype=x.dtype)], dim=1)  # (N, G + 1): the weights and the bias
        if self.ridge > 0:  # ‖XW − Y‖² + N·ridge·‖W‖² as one least-squares problem: rows √(N·ridge)·I below
            penalty = math.sqrt(count * self.ridge) * torch.eye(size, size + 1, dtype=x.dtype)
            design, y = torch.cat([design, penalty]), torch.cat([y, torch.zeros(size, size, dtype=y.dtype)])
        solution = torch.linalg.lstsq(design, y, driver="gelsd").solution  # (G + 1, G); gelsd: rank-deficient is fine
        self.weight, self.bias = solution[:-1].to(inputs), solution[-1].to(inputs)
        return self

    def _map(self, inputs: Tensor) -> Tensor:
        return inputs @ self.weight.to(inputs) + self.bias.to(inputs)


class NearestNeighbour(_GridBaseline):
    """The target of the training input nearest (in L2 over the training grid) to the given input: a lookup table,
    the weakest baseline that still learns from data."""

    def __init__(self) -> None:
        self.inputs: Tensor | None = None
        self.targets: Tensor | None = None

    def fit(self, inputs: Tensor, targets: Tensor) -> NearestNeighbour:
        """Keep `inputs` and `targets` (N, G), both on the training grid of G points; returns self."""
        self._check_pair(inputs, targets)
        self.inputs, self.targets = inputs.detach().clone(), targets.detach().clone()
        return self

    def _map(self, inputs: Tensor) -> Tensor:
        train = self.inputs.to(inputs.device)
        nearest = torch.cdist(inputs.double(), train.double()).argmin(dim=1)  # (B,); float64: exact ties stay exact
        return self.targets.to(inputs.device)[nearest].to(inputs.dtype)
