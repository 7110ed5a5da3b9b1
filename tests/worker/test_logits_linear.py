"""The LM head's float32 logits: a greedy pick between two tokens closer than a bf16 ulp still goes
to the larger one, on every path (the panel kernel's float sums, the PyTorch fallback's recomputed
near-maximum values)."""

from __future__ import annotations

import pytest
import torch

import worker.kernels as kernels
from worker.kernels.linear import logits_linear

LOW, HIGH = 5, 7  # two vocabulary rows whose logits round to the same value in the model's dtype


def near_tie(dtype: torch.dtype, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, 64] and w [300, 64] in ``dtype``: every row's logits at LOW and HIGH are 16 + d and
    16 + 2d with d an eighth of an ulp at 16, so both round to 16; the rest stay below 4."""
    g = torch.Generator().manual_seed(rows)
    d = 16 * torch.finfo(dtype).eps / 8
    w = torch.rand(300, 64, generator=g) * 0.1
    w[:, :2] = 0.0
    w[[LOW, HIGH]] = 0.0
    w[LOW, :2] = torch.tensor([16.0, d])
    w[HIGH, :2] = torch.tensor([16.0, 2 * d])
    x = torch.zeros(rows, 64)
    x[:, :2] = 1.0
    x[:, 2:] = torch.rand(rows, 62, generator=g) * 0.5
    return x.to(dtype), w.to(dtype)


def cpu_paths() -> list[str]:
    ops = kernels.cpu_ops()
    return ["kernels"] if ops is not None and ops.has_bf16_panels() else []


@pytest.mark.parametrize("path", ["pytorch", *cpu_paths()])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 4, 16])
def test_a_greedy_pick_closer_than_an_ulp_goes_to_the_larger_logit(
    path: str, dtype: torch.dtype, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "pytorch":
        monkeypatch.setattr("worker.kernels.linear.cpu_ops", lambda: None)
    x, w = near_tie(dtype, rows)
    rounded = torch.nn.functional.linear(x, w)
    assert rounded[:, LOW].tolist() == rounded[:, HIGH].tolist()  # tied where the logits are rounded
    logits = logits_linear(x, w)
    assert logits.dtype == torch.float32
    assert logits.argmax(-1).tolist() == [HIGH] * rows
    want = x.double() @ w.double().T
    torch.testing.assert_close(logits[:, [LOW, HIGH]].double(), want[:, [LOW, HIGH]], atol=1e-5, rtol=0)


def test_float32_logits_are_the_product() -> None:
    x, w = torch.randn(5, 64), torch.randn(300, 64)
    torch.testing.assert_close(logits_linear(x, w), torch.nn.functional.linear(x, w))
