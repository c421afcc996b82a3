"""Streaming statistics of a Linear's inputs, gathered by hooks while calibration data flows through.

Every observer merges with another of its kind by addition (batches, ranks), and checks its own numbers:
NaN or Inf in the statistics is the user's model or dtype at fault, never something to prune with.
"""

from __future__ import annotations

import torch

from .errors import NumericalError, RecipeError

# Rows per step: bounds the float32 temporary when squaring a large activation.
_CHUNK_ROWS = 8192
# Rows of H per product when accumulating its upper triangle: wide enough for an efficient matmul, narrow
# enough that the square blocks computed twice (below the diagonal of each strip) stay a small share.
_STRIP_ROWS = 128
# Input rows kept to measure a layer's reconstruction error when only norms are streamed (Wanda's statistics).
SAMPLE_ROWS = 256


class InputNormObserver:
    """Sum over calibration tokens of x_j^2 for each input feature j (Wanda's ||X_j||_2^2).

    Each batch is summed in float32 and accumulated in float64, so that the order in which batches (or ranks)
    are added does not change the result at float32 precision.
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.sum_squares = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.sum = torch.zeros(in_features, dtype=torch.float64, device=device)  # for DSnoT's mean and variance
        self.tokens = 0
        self.sample: torch.Tensor | None = None

    def update(self, inputs: torch.Tensor) -> None:
        rows = inputs.reshape(-1, inputs.shape[-1])
        if self.sample is None:  # rows spread over the first batch's positions, for the reconstruction error
            self.sample = rows[:: max(1, rows.shape[0] // SAMPLE_ROWS)][:SAMPLE_ROWS].float().clone()
        for chunk in rows.split(_CHUNK_ROWS):
            chunk = chunk.float()
            self.sum_squares += chunk.square().sum(0).to(self.sum_squares.device)
            self.sum += chunk.sum(0).to(self.sum.device)
        self.tokens += rows.shape[0]

    def merge(self, other: InputNormObserver) -> None:
        self.sum_squares += other.sum_squares.to(self.sum_squares.device)
        self.sum += other.sum.to(self.sum.device)
        self.tokens += other.tokens

    def input_sum_squares(self) -> torch.Tensor:
        return self.sum_squares.float()

    @property
    def mean(self) -> torch.Tensor:
        return (self.sum / max(self.tokens, 1)).float()

    @property
    def variance(self) -> torch.Tensor:
        return (self.sum_squares / max(self.tokens, 1) - (self.sum / max(self.tokens, 1)).square()).clamp_min(0).float()

    def all_reduce(self) -> None:
        """Sum the statistics of every rank (torch.distributed): each rank saw its share of the calibration."""
        import torch.distributed as dist

        for tensor in (self.sum_squares, self.sum):
            dist.all_reduce(tensor)
        self.tokens = _all_reduce_count(self.tokens, self.sum.device)

    def check_finite(self, layer: str) -> None:
        if not torch.isfinite(self.sum_squares).all():
            raise NumericalError(_not_finite(layer))

    def relative_error(self, weight: torch.Tensor, pruned: torch.Tensor) -> float | None:
        """||(W - W') X|| / ||W X|| on the sampled input rows."""
        if self.sample is None:
            return None
        x = self.sample.to(weight.device)
        reference = float(torch.linalg.norm(x @ weight.float().t()))
        return float(torch.linalg.norm(x @ (weight.float() - pruned.float()).t())) / max(reference, 1e-30)


class HessianObserver:
    """H = 2 X^T X / n over the calibration tokens (SparseGPT's layer Hessian), float32, as a running mean.

    ``device`` is where H is kept: the products are computed where the inputs are (the GPU) and added to
    H there, so keeping H on the CPU (``--hessians-on-cpu``) costs a copy per batch, not the product.
    H is symmetric: each batch adds only its upper triangle, in strips of rows (a symmetric rank-k update,
    about half the products of X^T X; torch has no syrk), and the lower triangle is filled when H is read.
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self._matrix = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self._lower_stale = False
        self.tokens = 0

    @property
    def hessian(self) -> torch.Tensor:
        if self._lower_stale:
            upper = torch.triu(self._matrix)
            self._matrix = upper + torch.triu(upper, 1).t()
            self._lower_stale = False
        return self._matrix

    def update(self, inputs: torch.Tensor) -> None:
        rows = inputs.reshape(-1, inputs.shape[-1])
        columns = rows.shape[1]
        for chunk in rows.split(_CHUNK_ROWS):
            total = self.tokens + chunk.shape[0]
            chunk = chunk.float()
            keep, add = self.tokens / total, 2.0 / total
            for start in range(0, columns, _STRIP_ROWS):
                strip = self._matrix[start : start + _STRIP_ROWS, start:]  # the upper triangle's rows, and more
                left, right = chunk[:, start : start + _STRIP_ROWS].t(), chunk[:, start:]
                if chunk.device == strip.device:
                    strip.addmm_(left, right, beta=keep, alpha=add)
                else:
                    strip.mul_(keep).add_((left @ right).to(strip.device), alpha=add)
            self._lower_stale = True
            self.tokens = total

    def merge(self, other: HessianObserver) -> None:
        total = self.tokens + other.tokens
        if total:
            self.hessian.mul_(self.tokens / total).add_(
                other.hessian.to(self.hessian.device), alpha=other.tokens / total
            )
        self.tokens = total

    def all_reduce(self) -> None:
        """The mean over every rank's tokens: sum of H_r n_r, divided by the total count."""
        import torch.distributed as dist

        total = _all_reduce_count(self.tokens, self.hessian.device)
        self.hessian.mul_(self.tokens)
        dist.all_reduce(self.hessian)
        self.hessian.div_(max(total, 1))
        self.tokens = total

    def input_sum_squares(self) -> torch.Tensor:
        """sum over tokens of x_j^2, read off the diagonal (H_jj = 2 sum x_j^2 / n): Wanda's statistic."""
        return torch.diagonal(self.hessian) * (self.tokens / 2.0)

    def check_finite(self, layer: str) -> None:
        if not torch.isfinite(self.hessian).all():
            raise NumericalError(_not_finite(layer))

    def relative_error(self, weight: torch.Tensor, pruned: torch.Tensor) -> float:
        """||(W - W') X|| / ||W X|| over every calibration token, exactly: sqrt(tr(dW H dW^T) / tr(W H W^T))."""
        hessian = self.hessian.to(weight.device)
        delta = weight.float() - pruned.float()
        error = (delta @ hessian * delta).sum()
        reference = (weight.float() @ hessian * weight.float()).sum()
        return float((error.clamp_min(0) / reference.clamp_min(1e-30)).sqrt())


class CrossObserver(HessianObserver):
    """H of the pruned stream's inputs (as HessianObserver) and the drift D = 2 (X_dense - X)^T X / n [in, in]
    (float32, not symmetric): the dense model's inputs of the same tokens against this stream's. A layer fitted to
    the dense model's output X_dense W^T from its own inputs X solves B H = W (H + D) (``fit: dense``); D is
    exactly zero where both streams agree (block 0)."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        super().__init__(in_features, device)
        self.drift = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)

    def update(self, inputs: torch.Tensor, dense: torch.Tensor | None = None) -> None:
        if dense is None or dense.shape != inputs.shape:
            raise RecipeError(
                "a layer fitted to the dense model's output needs the dense model's input of the same tokens (got "
                f"{None if dense is None else tuple(dense.shape)} for {tuple(inputs.shape)}): prune through "
                "secateurs.prune, whose walk pairs them, or use {method.fit} self"
            )
        rows, dense_rows = inputs.reshape(-1, inputs.shape[-1]), dense.reshape(-1, inputs.shape[-1])
        seen = self.tokens
        for chunk, reference in zip(rows.split(_CHUNK_ROWS), dense_rows.split(_CHUNK_ROWS), strict=True):
            total = seen + chunk.shape[0]
            chunk = chunk.float()
            difference = (reference.float() - chunk).t()
            if chunk.device == self.drift.device:  # in place: no [in, in] temporary per chunk
                self.drift.addmm_(difference, chunk, beta=seen / total, alpha=2.0 / total)
            else:
                self.drift.mul_(seen / total).add_((difference @ chunk).to(self.drift.device), alpha=2.0 / total)
            seen = total
        super().update(inputs)

    def merge(self, other: HessianObserver) -> None:
        if not isinstance(other, CrossObserver):
            raise TypeError("a CrossObserver merges only with another: the other holds no drift")
        total = self.tokens + other.tokens
        if total:
            self.drift.mul_(self.tokens / total).add_(other.drift.to(self.drift.device), alpha=other.tokens / total)
        super().merge(other)

    def all_reduce(self) -> None:
        import torch.distributed as dist

        total = _all_reduce_count(self.tokens, self.drift.device)
        self.drift.mul_(self.tokens)
        dist.all_reduce(self.drift)
        self.drift.div_(max(total, 1))
        super().all_reduce()

    def check_finite(self, layer: str) -> None:
        super().check_finite(layer)
        if not torch.isfinite(self.drift).all():
            raise NumericalError(_not_finite(layer))


def _all_reduce_count(count: int, device: torch.device) -> int:
    import torch.distributed as dist

    total = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total)


def _not_finite(layer: str) -> str:
    return (
        f"the inputs of {layer} hold NaN or Inf on the calibration data (overflow in a 16-bit dtype, or damaged "
        "weights): run with --dtype float32, or check the model"
    )


class MomentObserver(HessianObserver):
    """The first and second moments of a layer's inputs, E[x] and E[x x^T] (float32): what structured
    pruning scores channels with (FLAP's fluctuation needs the variance) and refits the next layer from."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        super().__init__(in_features, device)
        self.sum = torch.zeros(in_features, dtype=torch.float32, device=device)

    def update(self, inputs: torch.Tensor) -> None:
        super().update(inputs)
        rows = inputs.reshape(-1, inputs.shape[-1])
        self.sum += rows.float().sum(0).to(self.sum.device)

    def merge(self, other: HessianObserver) -> None:
        super().merge(other)
        self.sum += other.sum.to(self.sum.device)

    def all_reduce(self) -> None:
        import torch.distributed as dist

        dist.all_reduce(self.sum)
        super().all_reduce()

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.tokens, 1)

    @property
    def second_moment(self) -> torch.Tensor:
        return self.hessian / 2
