"""The bundled SmolLM2 through busstop's engine, against transformers' own GGUF loading and Llama code.

Tolerances (float32 on CPU): a prompt's full-vocabulary logits at every position within 1e-3 of
transformers' (observed ~7e-5, logits up to ~40 in magnitude); at every generated position, the
log-probabilities busstop reports for its top-5 tokens within 1e-3 of transformers' log_softmax
(observed ~2e-5).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from worker.engine.attention import TorchAttentionBackend
from worker.engine.attention.metadata import AttentionMetadata
from worker.engine.config import EngineConfig
from worker.engine.engine import Engine
from worker.engine.kv_cache import KVCache
from worker.engine.outputs import TokenLogprobs
from worker.engine.sampling_params import SamplingParams
from worker.loader import LoadedModel, ModelSettings, load_model
from worker.loader.default_model import default_gguf_path
from worker.loader.gguf_checkpoint import GGUFCheckpoint

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
]
MAX_NEW_TOKENS = 32
LOGIT_TOLERANCE = 1e-3
LOGPROB_TOLERANCE = 1e-3


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """CI machines are small and shared: several spinning intra-op threads slow a 135M model down."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(ModelSettings(device="cpu", dtype="float32", max_model_len=2048))


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    path = default_gguf_path()
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()


def run_greedy(loaded: LoadedModel, prompt_ids: list[int]) -> tuple[list[int], list[TokenLogprobs]]:
    engine = Engine(loaded.model, EngineConfig(max_model_len=2048, num_pages=32), loaded.eos_token_ids)
    engine.add_request("r", prompt_ids, SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0, logprobs=5))
    token_ids: list[int] = []
    logprobs: list[TokenLogprobs] = []
    while engine.has_unfinished():
        for out in engine.step():
            token_ids += out.new_token_ids
            logprobs += out.logprobs or []
    return token_ids, logprobs


def chat(loaded: LoadedModel, prompt: str) -> list[int]:
    return loaded.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])


def test_loaded_default(loaded: LoadedModel) -> None:
    assert loaded.name == "smollm2"
    assert loaded.eos_token_ids == (2,)  # <|im_end|>
    assert loaded.tokenizer.decode([2], skip_special_tokens=False) == "<|im_end|>"
    assert loaded.max_model_len == 2048


def test_weights_equal_transformers_gguf_dequantization(reference: torch.nn.Module) -> None:
    """Dequantization, HF names and the Q/K unpermute, bit for bit."""
    checkpoint = GGUFCheckpoint(default_gguf_path())
    expected = reference.state_dict()
    names = checkpoint.tensor_names()
    assert len(names) == 272 and set(names) == set(expected) - {"lm_head.weight"}  # tied
    for name in names:
        assert torch.equal(checkpoint.get_tensor(name), expected[name]), name


def test_prompt_logits_match_transformers(loaded: LoadedModel, reference: torch.nn.Module) -> None:
    """One prefill through the model and the engine's PyTorch attention backend, every position."""
    ids = chat(loaded, PROMPTS[0])
    config, page_size = loaded.config, 16
    page_ids = list(range(-(-len(ids) // page_size)))
    kv_cache = KVCache(
        config.num_hidden_layers,
        len(page_ids),
        page_size,
        config.num_key_value_heads,
        config.head_dim,
        torch.float32,
        torch.device("cpu"),
    )
    metadata = AttentionMetadata.build([len(ids)], [len(ids)], [page_ids], page_size, torch.device("cpu"))
    backend = TorchAttentionBackend()
    backend.plan(metadata)
    hidden = loaded.model(torch.tensor(ids), metadata.positions, backend, kv_cache)  # [num_tokens, hidden]
    ours = loaded.model.compute_logits(hidden)  # [num_tokens, vocab]
    with torch.no_grad():
        theirs = reference(torch.tensor([ids])).logits[0]  # [num_tokens, vocab]
    assert ours.shape == theirs.shape == (len(ids), config.vocab_size)
    assert (ours - theirs).abs().max().item() <= LOGIT_TOLERANCE


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_and_logprobs_match_transformers(
    loaded: LoadedModel, reference: torch.nn.Module, prompt: str
) -> None:
    prompt_ids = chat(loaded, prompt)
    token_ids, logprobs = run_greedy(loaded, prompt_ids)
    with torch.no_grad():
        expected = reference.generate(  # stops at <|im_end|>, as the engine does
            torch.tensor([prompt_ids]),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    assert token_ids == expected.sequences[0, len(prompt_ids) :].tolist()
    assert len(logprobs) == len(expected.logits) == len(token_ids)
    for step, (ours, theirs) in enumerate(zip(logprobs, expected.logits, strict=True)):
        ref = torch.log_softmax(theirs[0].float(), dim=-1)  # [vocab]
        assert [t for t, _ in ours.top] == ref.topk(5).indices.tolist(), step
        for token_id, logprob in ours.top:
            assert abs(logprob - ref[token_id].item()) <= LOGPROB_TOLERANCE, (step, token_id)


def test_capital_of_france_is_paris(loaded: LoadedModel) -> None:
    token_ids, _ = run_greedy(loaded, chat(loaded, "What is the capital of France?"))
    assert "Paris" in loaded.tokenizer.decode(token_ids)


@pytest.mark.parametrize("num_seqs", [1, 4])
def test_in_bfloat16_the_capital_of_france_is_still_paris(num_seqs: int) -> None:
    """What lets ``dtype: auto`` pick bf16 on CPUs that compute in it natively, as a worker serves it:
    a bf16 KV cache too. Its first token is a near tie ("The" -1.88, "L" -1.97 in float32) that bf16
    logits rounded into an exact one, which the lower token id won."""
    bf16 = load_model(ModelSettings(device="cpu", dtype="bfloat16", max_model_len=2048))
    engine = Engine(bf16.model, EngineConfig(max_model_len=2048, num_pages=64, dtype=torch.bfloat16),
                    bf16.eos_token_ids)
    prompt = chat(bf16, "What is the capital of France?")
    for n in range(num_seqs):
        engine.add_request(str(n), prompt, SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0))
    answers = {str(n): [] for n in range(num_seqs)}
    while engine.has_unfinished():
        for out in engine.step():
            answers[out.req_id] += out.new_token_ids
    for token_ids in answers.values():
        assert "Paris" in bf16.tokenizer.decode(token_ids)
