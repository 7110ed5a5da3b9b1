"""Fixtures of the worker service tests: a tiny random Llama, the default tokenizer, an async Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import transformers
from redis.asyncio import Redis

from tests.worker.tiny_llama import make_hf_model
from worker.loader.load import load_tokenizer, resolve_path
from worker.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def hf_model() -> transformers.PreTrainedModel:
    return make_hf_model()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(resolve_path("default"))  # ids below 256 decode to text: enough for a tiny model


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()
