"""The fused CPU kernels against the PyTorch ops they replace, and the switch that turns them off."""

from __future__ import annotations

import pytest
import torch

import worker.kernels as kernels
import worker.kernels.linear as linear_module
from tests.worker.test_attention import dense_reference, make_case
from tests.worker.tiny_llama import make_engine, make_hf_model
from worker.engine.attention import TorchAttentionBackend
from worker.engine.engine import generate
from worker.engine.sampler import argmax_rows
from worker.engine.sampling_params import SamplingParams
from worker.kernels.linear import linear
from worker.model.layers.activation import silu_and_mul, silu_and_mul_torch
from worker.model.layers.norm import RMSNorm, rms_norm_torch
from worker.model.rope import RotaryEmbedding, apply_rope, apply_rope_qk

ops = kernels.cpu_ops()
pytestmark = pytest.mark.skipif(ops is None, reason="the CPU kernels could not be built (no C++ compiler?)")

# bf16 kernels round once where the eager ops round after each op: a few bf16 ulps apart
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_the_eager_norm(dtype: torch.dtype, with_residual: bool) -> None:
    norm = RMSNorm(96, 1e-5).to(dtype)
    norm.weight.data.normal_(1.0, 0.2)
    x = torch.randn(7, 96).to(dtype) * 3
    residual = torch.randn(7, 96).to(dtype) if with_residual else None
    out, total = norm(x, residual)
    want_out, want_total = rms_norm_torch(x, residual, norm.weight, norm.eps)
    torch.testing.assert_close(out.float(), want_out.float(), **TOLERANCE[dtype])
    torch.testing.assert_close(total, want_total, atol=0, rtol=0)  # the add rounds exactly as eager


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_matches_the_eager_ops_across_the_range(dtype: torch.dtype) -> None:
    x = (torch.randn(5, 2 * 200) * 30).to(dtype)  # far into both tails of the exp
    x[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])
    torch.testing.assert_close(silu_and_mul(x).float(), silu_and_mul_torch(x).float(), **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_rotates_strided_views_of_qkv_in_place(dtype: torch.dtype) -> None:
    tokens, heads, kv_heads, dim = 6, 4, 2, 32
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim).to(dtype)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q, k = q.view(tokens, heads, dim), k.view(tokens, kv_heads, dim)
    cos, sin = RotaryEmbedding(dim, 10000.0, None).cos_sin(torch.arange(100, 100 + tokens), dtype)
    want_q, want_k, v_before = apply_rope(q, cos, sin), apply_rope(k, cos, sin), v.clone()
    got_q, got_k = apply_rope_qk(q, k, cos, sin)
    assert got_q.data_ptr() == q.data_ptr() and got_k.data_ptr() == k.data_ptr()
    torch.testing.assert_close(got_q.float(), want_q.float(), **TOLERANCE[dtype])
    torch.testing.assert_close(got_k.float(), want_k.float(), **TOLERANCE[dtype])
    assert torch.equal(v, v_before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_fills_the_slots_index_copy_fills(dtype: torch.dtype) -> None:
    tokens, kv_heads, dim, pages, page_size = 5, 2, 16, 6, 4
    qkv = torch.randn(tokens, (4 + 2 * kv_heads) * dim).to(dtype)  # k, v: strided views, as in a layer
    _, k, v = qkv.split([4 * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    k, v = k.view(tokens, kv_heads, dim), v.view(tokens, kv_heads, dim)
    slots = torch.tensor([23, 0, 9, 10, 4])
    k_cache, v_cache = (torch.randn(pages, page_size, kv_heads, dim).to(dtype) for _ in range(2))
    want_k, want_v = k_cache.clone(), v_cache.clone()
    want_k.view(-1, kv_heads, dim).index_copy_(0, slots, k)
    want_v.view(-1, kv_heads, dim).index_copy_(0, slots, v)
    ops.write_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
    with pytest.raises(RuntimeError, match="outside the cache"):
        ops.write_kv(k, v, k_cache, v_cache, torch.tensor([0, 1, 2, 3, pages * page_size]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_decode_reads_pages_in_place_like_the_gathered_sdpa(dtype: torch.dtype) -> None:
    md, (q, k, v, k_cache, v_cache), (qs, full_k, full_v) = make_case(torch.device("cpu"), dtype)
    backend = TorchAttentionBackend()
    backend.plan(md)
    got = backend.forward(q, k, v, k_cache, v_cache)
    nd = md.num_decode_seqs
    want = backend._decode(q[:nd], k_cache, v_cache, backend._decode_page_table, backend._decode_max_kv,
                           backend._decode_mask)
    torch.testing.assert_close(got[:nd].float(), want.float(), **TOLERANCE[dtype])
    torch.testing.assert_close(got.double(), dense_reference(qs, full_k, full_v),
                               **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 3, 8, 9])  # query heads per KV head; bf16 unrolls 1-8
@pytest.mark.parametrize("head_dim", [64, 128, 48])  # 64 and 128 unrolled, 48 the generic loop
def test_paged_decode_at_each_head_size_and_group(head_dim: int, group: int, dtype: torch.dtype) -> None:
    seqs, kv_heads, page_size, num_pages = 5, 2, 16, 40
    heads = group * kv_heads
    g = torch.Generator().manual_seed(head_dim * group)
    k_cache = torch.randn(num_pages, page_size, kv_heads, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(num_pages, page_size, kv_heads, head_dim, generator=g).to(dtype)
    lens = torch.tensor([1, 16, 17, 40, 33])
    table = torch.randperm(num_pages, generator=g)[:seqs * 3].view(seqs, 3).contiguous()
    q = torch.randn(seqs, heads, head_dim, generator=g).to(dtype)
    out = torch.empty_like(q)
    ops.paged_decode_attention(q, k_cache, v_cache, table, lens, head_dim**-0.5, out)
    for s in range(seqs):  # in float64, from the same (rounded) inputs
        slots = (table[s][:, None] * page_size + torch.arange(page_size)).flatten()[: lens[s]]
        kk = k_cache.flatten(0, 1)[slots].double().repeat_interleave(group, 1)
        vv = v_cache.flatten(0, 1)[slots].double().repeat_interleave(group, 1)
        probs = (torch.einsum("hd,khd->hk", q[s].double(), kk) * head_dim**-0.5).softmax(-1)
        want = torch.einsum("hk,khd->hd", probs, vv)
        torch.testing.assert_close(out[s].double(), want, **TOLERANCE[dtype])


def test_a_tiny_model_generates_the_same_tokens_with_and_without_kernels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    hf_model = make_hf_model()
    prompts = [[1, 2, 3], list(range(10, 40)), [5] * 17]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    fused = generate(make_engine(hf_model), prompts, params)
    monkeypatch.setattr(kernels, "cpu_ops", lambda: None)
    assert generate(make_engine(hf_model), prompts, params) == fused


def test_the_switch_turns_the_kernels_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSSTOP_CPU_KERNELS", "false")
    kernels.cpu_ops.cache_clear()
    try:
        assert kernels.cpu_ops() is None
    finally:
        monkeypatch.delenv("BUSSTOP_CPU_KERNELS")
        kernels.cpu_ops.cache_clear()
    assert kernels.cpu_ops() is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [1, 7, 16, 49, 49152])  # inside one lane block, ragged tails, a vocabulary
def test_argmax_is_torchs_first_maximum(dtype: torch.dtype, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(8, n + 3, generator=g).to(dtype)[:, 2 : n + 2]  # rows strided wider than n
    x[1] = x[1].round()  # many ties
    x[2, n // 2 :] = x[2].max()  # the maximum repeated from the middle: the first one counts
    x[3] = float("-inf")  # a fully masked row
    x[4, n // 3] = float("nan")
    x[4, -1] = float("nan")  # the first NaN counts, as in torch
    x[5] = 0.0
    x[6, -1] = float("inf")
    got = torch.empty(8, dtype=torch.long)
    ops.argmax(x, got)
    assert got.tolist() == x.argmax(-1).tolist()
    assert argmax_rows(x).tolist() == got.tolist()  # what the sampler calls


@pytest.mark.parametrize("rows", [1, 5, 6, 13])  # tiles of six rows, and the rest
@pytest.mark.parametrize("out_features", [300, 64])  # groups of four panels and a part panel, or whole
@pytest.mark.parametrize("in_features", [576, 34])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_bf16_panel_linear_matches_a_float64_product(rows: int, out_features: int, in_features: int,
                                                     with_bias: bool, out_dtype: torch.dtype) -> None:
    if not ops.has_bf16_panels():
        pytest.skip("this CPU has no AVX512-BF16: linear() keeps oneDNN or F.linear")
    g = torch.Generator().manual_seed(rows * in_features + out_features)
    w = torch.randn(out_features, in_features, generator=g).bfloat16()
    x = torch.randn(rows, in_features + 5, generator=g).bfloat16()[:, 3 : in_features + 3]  # strided rows
    bias = torch.randn(out_features, generator=g).bfloat16() if with_bias else None
    got = torch.empty(rows, out_features, dtype=out_dtype)
    ops.bf16_panel_linear(x, linear_module.pack_panels(w), bias, got)
    want = torch.nn.functional.linear(x.double(), w.double(), None if bias is None else bias.double())
    if out_dtype == torch.float32:  # the float sums as they are: float rounding only
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)
    else:  # products exact, one rounding
        torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 4, 16, 70])
def test_linear_at_every_batch_size_is_f_linear(dtype: torch.dtype, rows: int) -> None:
    g = torch.Generator().manual_seed(rows)
    w = torch.nn.Parameter(torch.randn(200, 96, generator=g).to(dtype), requires_grad=False)
    bias = torch.randn(200, generator=g).to(dtype)
    x = torch.randn(rows, 96, generator=g).to(dtype)
    for b in (None, bias):
        got = linear(x, w, b)
        want = torch.nn.functional.linear(x, w, b)
        torch.testing.assert_close(got.float(), want.float(), **TOLERANCE[dtype])
        assert torch.equal(linear(x, w, b), got)  # again, through the kept copy
    by_panels = dtype == torch.bfloat16 and ops.has_bf16_panels()  # else oneDNN's reordered copy
    assert hasattr(w, linear_module._PANELS) == by_panels
    assert hasattr(w, linear_module._PACKED) == (not by_panels)
    with torch.no_grad():  # a weight written in place (as the loaders do) is packed again, not stale
        w.mul_(-1.0)
    torch.testing.assert_close(linear(x, w).float(), torch.nn.functional.linear(x, w).float(),
                               **TOLERANCE[dtype])
