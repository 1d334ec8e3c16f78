"""Shared fixtures: deterministic seeds and the dense reference for linear layers."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _private_choice_cache(tmp_path_factory):
    """convert()'s on-disk cache of measured choices goes to a temporary folder, never the
    user's cache dir (and tests never reuse another run's measurements)."""
    import os

    old = os.environ.get("SPARSEPRUNE_CACHE_DIR")
    os.environ["SPARSEPRUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("choice-cache"))
    yield
    if old is None:
        os.environ.pop("SPARSEPRUNE_CACHE_DIR", None)
    else:
        os.environ["SPARSEPRUNE_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def reference_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x Wᵀ + b in float64 (the ground truth kernels are compared with)."""
    y = x.double() @ w.double().T
    return y if b is None else y + b.double()


def assert_close_linear(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                        b: torch.Tensor | None, label: str = "") -> None:
    """fp32 error bound scaled by K: |y - ref| <= 1e-5 sqrt(K) (|x| |W|ᵀ + |b|) + 1e-6."""
    ref = reference_linear(x, w, b)
    k = max(1, x.shape[-1])
    scale = x.double().abs() @ w.double().abs().T
    if b is not None:
        scale = scale + b.double().abs()
    bound = 1e-5 * k**0.5 * scale + 1e-6
    assert y.shape == ref.shape, (y.shape, ref.shape)
    assert y.dtype == torch.float32
    finite = torch.isfinite(ref)
    err = (y.double() - ref).abs()
    bad = finite & ~(err <= bound)  # NaN errors count as bad
    if bad.any():
        r, c = (int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{label}: y[{r}, {c}] (batch row {r}, output {c}) = {y[r, c].item():.6g}, expected "
            f"{ref[r, c].item():.6g} (bound {bound[r, c].item():.2e}); {int(bad.sum())} bad "
            "entries")
    # Non-finite references must be matched exactly in kind (NaN / +Inf / -Inf).
    assert torch.equal(torch.isnan(y[~finite]), torch.isnan(ref[~finite]))
