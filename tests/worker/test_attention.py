"""Attention metadata and backends: exact metadata, the torch backend against a dense reference, and
FlashInfer against the torch backend on the same metadata (gpu)."""

from __future__ import annotations

import pytest
import torch

from worker.engine.attention import TorchAttentionBackend
from worker.engine.attention.metadata import AttentionMetadata

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE, NUM_PAGES = 4, 2, 16, 4, 32
# (q_len, kv_len): decodes first, then a chunk after a cached prefix, then a whole prompt.
BATCH = [(1, 1), (1, 9), (1, 16), (5, 13), (7, 7)]


def test_metadata_is_flashinfer_format() -> None:
    md = AttentionMetadata.build([1, 3], [6, 3], [[7, 2, 9], [4]], page_size=4, device=torch.device("cpu"))
    assert md.qo_indptr.tolist() == [0, 1, 4]
    assert md.kv_indptr.tolist() == [0, 2, 3]
    assert md.kv_indices.tolist() == [7, 2, 4]
    assert md.kv_last_page_len.tolist() == [2, 3]
    assert md.positions.tolist() == [5, 0, 1, 2]
    assert md.slot_mapping.tolist() == [2 * 4 + 1, 16, 17, 18]
    assert md.num_decode_seqs == 1
    with pytest.raises(ValueError, match="first"):
        AttentionMetadata.build([3, 1], [3, 6], [[4], [7, 2]], page_size=4, device=torch.device("cpu"))


def make_case(device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Random full K/V per sequence; the cache holds the cached prefix, k/v the new tokens."""
    g = torch.Generator().manual_seed(seed)
    pages = torch.randperm(NUM_PAGES, generator=g).tolist()
    k_cache = torch.zeros(NUM_PAGES, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    tables, full_k, full_v, qs, ks, vs = [], [], [], [], [], []
    for q_len, kv_len in BATCH:
        n = -(-kv_len // PAGE_SIZE)
        table, pages = pages[:n], pages[n:]
        tables.append(table)
        fk = torch.randn(kv_len, NUM_KV_HEADS, HEAD_DIM, generator=g).to(dtype)
        fv = torch.randn(kv_len, NUM_KV_HEADS, HEAD_DIM, generator=g).to(dtype)
        for pos in range(kv_len - q_len):
            k_cache[table[pos // PAGE_SIZE], pos % PAGE_SIZE] = fk[pos]
            v_cache[table[pos // PAGE_SIZE], pos % PAGE_SIZE] = fv[pos]
        full_k.append(fk)
        full_v.append(fv)
        qs.append(torch.randn(q_len, NUM_HEADS, HEAD_DIM, generator=g).to(dtype))
        ks.append(fk[kv_len - q_len:])
        vs.append(fv[kv_len - q_len:])
    md = AttentionMetadata.build([q for q, _ in BATCH], [kv for _, kv in BATCH], tables, PAGE_SIZE, device)
    tensors = [torch.cat(x).to(device) for x in (qs, ks, vs)] + [k_cache.to(device), v_cache.to(device)]
    return md, tensors, (qs, full_k, full_v)


def dense_reference(qs, full_k, full_v) -> torch.Tensor:
    outs = []
    group = NUM_HEADS // NUM_KV_HEADS
    for q, k, v in zip(qs, full_k, full_v, strict=True):
        q, k, v = q.double(), k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
        q_len, kv_len = q.shape[0], k.shape[0]
        scores = torch.einsum("qhd,khd->hqk", q, k) / HEAD_DIM**0.5
        allowed = torch.arange(kv_len)[None, :] <= torch.arange(q_len)[:, None] + (kv_len - q_len)
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        outs.append(torch.einsum("hqk,khd->qhd", probs, v))
    return torch.cat(outs)


def test_torch_backend_matches_dense_reference_and_writes_the_cache() -> None:
    md, (q, k, v, k_cache, v_cache), (qs, full_k, full_v) = make_case(torch.device("cpu"), torch.float32)
    backend = TorchAttentionBackend()
    backend.plan(md)
    out = backend.forward(q, k, v, k_cache, v_cache)
    torch.testing.assert_close(out.double(), dense_reference(qs, full_k, full_v), atol=1e-5, rtol=1e-5)
    flat = k_cache.view(-1, NUM_KV_HEADS, HEAD_DIM)
    torch.testing.assert_close(flat[md.slot_mapping], k)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flashinfer_matches_torch_backend_on_the_same_metadata(dtype: torch.dtype) -> None:
    from worker.engine.attention.flashinfer_backend import FlashInferAttentionBackend

    device = torch.device("cuda")
    md, (q, k, v, k_cache, v_cache), _ = make_case(device, dtype)
    torch_backend = TorchAttentionBackend()
    torch_backend.plan(md)
    expected = torch_backend.forward(q, k, v, k_cache.clone(), v_cache.clone())
    fi = FlashInferAttentionBackend(NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, dtype, device)
    fi.plan(md)
    got = fi.forward(q, k, v, k_cache, v_cache)
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_engine_on_cuda_with_flashinfer_matches_torch_backend() -> None:
    from tests.worker.tiny_llama import make_engine, make_hf_model
    from worker.engine.engine import generate
    from worker.engine.sampling_params import SamplingParams

    hf_model = make_hf_model()
    prompts = [[1, 2, 3], list(range(10, 40)), [5] * 17]
    params = SamplingParams(max_tokens=8, temperature=0.0)
    results = {}
    for backend in ("torch", "flashinfer"):
        engine = make_engine(hf_model, device="cuda", dtype=torch.float16, attention_backend=backend,
                             max_num_batched_tokens=16)
        results[backend] = generate(engine, prompts, params)
    # fp16 kernels differ in summation order; the first tokens must agree, later ones may drift on ties
    assert [r[:3] for r in results["flashinfer"]] == [r[:3] for r in results["torch"]]


def test_backend_choice() -> None:
    from worker.engine.attention import resolve_backend_name

    cpu = torch.device("cpu")
    assert resolve_backend_name("auto", cpu, torch.bfloat16) == "torch"
    assert resolve_backend_name("torch", cpu, torch.float32) == "torch"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend_name("flashinfer", cpu, torch.bfloat16)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        resolve_backend_name("flashinfer", torch.device("cuda"), torch.float32)
