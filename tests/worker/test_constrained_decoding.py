"""Constrained decoding in the engine.

With a tiny random model and a constraint of its own (the engine's collaborator): the masks apply to
the constrained rows only, in one batched step (free rows get exactly the tokens they get alone), a
finished constraint stops its request, a broken one fails it alone, and logit_bias moves the logits.
With the bundled model and real llguidance grammars: the output matches its schema, and a preempted
or a resumed constrained request gives the same tokens as one that ran undisturbed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import jsonschema
import pytest
import torch

from tests.worker.test_engine import drain
from tests.worker.tiny_llama import make_engine, make_hf_model, one_torch_thread
from worker.engine.config import EngineConfig
from worker.engine.constraint import ConstraintError
from worker.engine.engine import Engine
from worker.engine.sampling_params import SamplingParams
from worker.loader import LoadedModel, ModelSettings, load_model
from worker.structured.grammar import GrammarCompiler, GrammarError

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
SAMPLED = SamplingParams(max_tokens=8, temperature=1.0, seed=3, ignore_eos=True)
FREE_PROMPTS = {"free-0": [1, 5, 9, 2], "free-1": [3, 3, 7]}


class AllowedTokens:
    """A constraint that allows ``allowed`` tokens, is finished after ``length`` of them, and refuses
    any other token."""

    def __init__(self, allowed: Sequence[int], length: int = 100) -> None:
        self.allowed = set(allowed)
        self.length = length
        self.taken: list[int] = []

    def fill_mask(self, row: torch.Tensor) -> None:
        for t in self.allowed:
            row[t // 32] |= 1 << (t % 32)

    def advance(self, token_id: int) -> None:
        if token_id not in self.allowed:
            raise ConstraintError(f"token {token_id} is not allowed")
        self.taken.append(token_id)

    def replay(self, token_ids: Sequence[int]) -> None:
        for t in token_ids:
            self.advance(t)

    @property
    def is_finished(self) -> bool:
        return len(self.taken) >= self.length


class Broken(AllowedTokens):
    def fill_mask(self, row: torch.Tensor) -> None:
        pass  # allows nothing: whatever is sampled breaks it


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def hf_model():  # type: ignore[no-untyped-def]
    return make_hf_model()


def tokens_of(engine: Engine) -> tuple[dict[str, list[int]], dict[str, tuple[str | None, str | None]]]:
    tokens: dict[str, list[int]] = {}
    ends: dict[str, tuple[str | None, str | None]] = {}
    for req_id, outs in drain(engine).items():
        tokens[req_id] = [t for o in outs for t in o.new_token_ids]
        ends[req_id] = (outs[-1].finish_reason, outs[-1].error)
    return tokens, ends


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_masks_apply_to_constrained_rows_only_and_free_rows_get_their_own_tokens(
    hf_model, params: SamplingParams
) -> None:
    alone = make_engine(hf_model)
    for req_id, prompt in FREE_PROMPTS.items():
        alone.add_request(req_id, prompt, params)
    free_tokens, _ = tokens_of(alone)

    mixed = make_engine(hf_model)
    allowed = [200, 201, 233, 255]  # two in the last mask word, past the vocabulary's 256 bits: none
    for req_id, prompt in FREE_PROMPTS.items():
        mixed.add_request(req_id, prompt, params)
    constraints = {f"json-{i}": AllowedTokens(allowed, length=5) for i in range(2)}
    for i, (req_id, constraint) in enumerate(constraints.items()):
        mixed.add_request(req_id, [4 + i, 8, 15], params, constraint=constraint)
    tokens, ends = tokens_of(mixed)

    assert {r: tokens[r] for r in FREE_PROMPTS} == free_tokens
    for req_id, constraint in constraints.items():
        assert tokens[req_id] == constraint.taken and set(tokens[req_id]) <= set(allowed)
        assert len(tokens[req_id]) == 5 and ends[req_id] == ("stop", None)  # finished by its constraint


def test_a_constraint_that_allows_nothing_fails_its_request_alone(hf_model) -> None:
    engine = make_engine(hf_model)
    engine.add_request("free", FREE_PROMPTS["free-0"], GREEDY)
    engine.add_request("broken", [4, 8, 15], GREEDY, constraint=Broken([]))
    tokens, ends = tokens_of(engine)
    reason, error = ends["broken"]
    assert reason == "error" and error is not None and "not allowed" in error
    assert len(tokens["free"]) == GREEDY.max_tokens and ends["free"] == ("length", None)


def test_a_resumed_request_replays_its_tokens_into_the_constraint(hf_model) -> None:
    engine = make_engine(hf_model)
    with pytest.raises(ValueError, match="break the request's grammar"):
        engine.add_request("r", [4, 8, 15], GREEDY, output_token_ids=[7], constraint=AllowedTokens([200]))
    constraint = AllowedTokens([200, 201], length=4)
    engine.add_request("r", [4, 8, 15], GREEDY, output_token_ids=[200, 201], constraint=constraint)
    tokens, ends = tokens_of(engine)
    assert len(tokens["r"]) == 2 and ends["r"] == ("stop", None)


def test_logit_bias_moves_the_logits(hf_model) -> None:
    engine = make_engine(hf_model)
    engine.add_request("up", [1, 5, 9, 2], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True,
                                                          logit_bias=((77, 100.0),)))
    plain = make_engine(hf_model)
    plain.add_request("plain", [1, 5, 9, 2], GREEDY)
    (first,) = tokens_of(plain)[0].values()
    engine.add_request("down", [1, 5, 9, 2], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True,
                                                            logit_bias=((first[0], -100.0),)))
    tokens, _ = tokens_of(engine)
    assert tokens["up"] == [77] * 4
    assert tokens["down"][0] != first[0]
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request("x", [1], SamplingParams(logit_bias=((256, 1.0),)))
    with pytest.raises(ValueError, match="logit_bias values"):
        SamplingParams(logit_bias=((1, 101.0),))


# --- the bundled model and real grammars -------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "maximum": 150},
                   "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3}},
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
GRAMMAR = "start: %json " + json.dumps({**SCHEMA, "x-guidance": {"whitespace_flexible": False}})
PROMPTS = ["Describe a pirate as JSON.", "A teacher, as a JSON record.", "Who is the queen? JSON please."]
CONSTRAINED = SamplingParams(max_tokens=80, temperature=0)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(ModelSettings(device="cpu", dtype="float32", max_model_len=1024))


@pytest.fixture(scope="module")
def grammars(loaded: LoadedModel) -> GrammarCompiler:
    return GrammarCompiler(loaded.tokenizer.hf, loaded.config.vocab_size)


def run(loaded: LoadedModel, grammars: GrammarCompiler, num_pages: int,
        resume: dict[str, list[int]] | None = None) -> tuple[dict[str, list[int]], int]:
    engine = Engine(loaded.model, EngineConfig(max_model_len=1024, num_pages=num_pages, page_size=16,
                                               enable_prefix_caching=False), loaded.eos_token_ids)
    for i, prompt in enumerate(PROMPTS):
        ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        engine.add_request(f"r{i}", ids, CONSTRAINED, constraint=grammars.compile(GRAMMAR),
                           output_token_ids=(resume or {}).get(f"r{i}", []))
    tokens, ends = tokens_of(engine)
    assert all(end == ("stop", None) for end in ends.values()), ends
    return tokens, engine.stats().num_preemptions


def test_constrained_output_matches_its_schema_through_preemption_and_resume(
    loaded: LoadedModel, grammars: GrammarCompiler
) -> None:
    reference, num_preemptions = run(loaded, grammars, num_pages=64)
    assert num_preemptions == 0
    for tokens in reference.values():
        jsonschema.validate(json.loads(loaded.tokenizer.decode(tokens)), SCHEMA)

    preempted, num_preemptions = run(loaded, grammars, num_pages=10)  # 160 slots: 3 x ~37 + 3 x ~18 overflow
    assert num_preemptions > 0
    assert preempted == reference

    sent = {req_id: tokens[:7] for req_id, tokens in reference.items()}  # then its worker died
    resumed, _ = run(loaded, grammars, num_pages=64, resume=sent)
    assert {r: sent[r] + resumed[r] for r in resumed} == reference


def test_a_grammar_that_cannot_compile_is_a_grammar_error(grammars: GrammarCompiler) -> None:
    with pytest.raises(GrammarError, match="minLength"):
        grammars.compile('start: %json {"type": "string", "minLength": 3, "maxLength": 1}')
    first, second = grammars.compile(GRAMMAR), grammars.compile(GRAMMAR)  # one compile, two matchers
    assert first is not second and not first.is_finished
