"""What one rank holds and reads, checked without starting a group (no collective runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.worker.tp_models import full_weights, tiny_config
from worker.loader.hf_checkpoint import HFCheckpoint
from worker.model.llama import LlamaForCausalLM
from worker.model.parallel import ParallelContext
from worker.parallel.node import assign_devices, group_env
from worker.parallel.settings import parallel_settings
from worker.parallel.shard_weights import rank_weights


class CountingCheckpoint(HFCheckpoint):
    """Counts the elements read from disk."""

    num_read = 0

    def get_tensor(self, name: str) -> torch.Tensor:
        t = super().get_tensor(name)
        self.num_read += t.numel()
        return t

    def get_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        t = super().get_slice(name, dim, start, stop)
        self.num_read += t.numel()
        return t


@pytest.mark.parametrize("num_kv_heads", [2, 1], ids=["kv-split", "kv-replicated"])
@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_reads_only_its_slices_and_holds_the_same_shard(
    tmp_path: Path, rank: int, num_kv_heads: int
) -> None:
    config = tiny_config(4, num_kv_heads)
    weights = full_weights(config, seed=0)
    (tmp_path / "config.json").write_text("{}")
    save_file(dict(weights), str(tmp_path / "model.safetensors"))
    parallel = ParallelContext(rank=rank, world_size=2)

    from_full = LlamaForCausalLM(config, parallel)
    from_full.load_weights(weights)  # full tensors, each weight_loader cuts its shard
    checkpoint = CountingCheckpoint(tmp_path)
    lazy = LlamaForCausalLM(config, parallel)
    lazy.load_weights(rank_weights(checkpoint, torch.float32))

    for (name, expected), (_, got) in zip(
        from_full.state_dict().items(), lazy.state_dict().items(), strict=True
    ):
        assert torch.equal(got, expected), name
    total = sum(t.numel() for _, t in weights)
    if num_kv_heads == 2:
        assert checkpoint.num_read < 0.55 * total  # about half: every matrix is split in two
    else:  # the one KV head is replicated: k and v are read whole by both ranks
        kv = sum(t.numel() for n, t in weights if ".k_proj." in n or ".v_proj." in n)
        assert checkpoint.num_read < 0.55 * (total - kv) + kv


def test_each_rank_keeps_the_kv_head_its_query_heads_read() -> None:
    """4 query heads over 4 ranks with 2 KV heads: ranks 0,1 read KV head 0 and ranks 2,3 head 1."""
    config = tiny_config(4, 2)
    weights = dict(full_weights(config, seed=0))
    for rank in range(4):
        model = LlamaForCausalLM(config, ParallelContext(rank=rank, world_size=4))
        model.load_weights(weights.items())
        qkv = model.model.layers[0].self_attn.qkv_proj.weight  # [q 16 | k 16 | v 16, hidden]
        k_full = weights["model.layers.0.self_attn.k_proj.weight"]  # [2 heads x 16, hidden]
        kv_head = rank // 2
        assert torch.equal(qkv[16:32], k_full[kv_head * 16 : (kv_head + 1) * 16])


def test_kv_heads_that_do_not_replicate_evenly_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot be replicated evenly"):
        LlamaForCausalLM(tiny_config(6, 2), ParallelContext(rank=0, world_size=3))


def test_the_node_launcher_gives_each_group_its_own_gpus() -> None:
    groups = assign_devices([str(i) for i in range(8)], 2)
    assert groups == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    env = group_env(groups[1], 2)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["BUSSTOP_WORKER_TENSOR_PARALLEL_SIZE"] == "2"
    with pytest.raises(ValueError, match="do not split"):
        assign_devices(["0", "1", "2"], 2)


def test_the_tp_size_comes_from_the_command_line_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUSSTOP_WORKER_TENSOR_PARALLEL_SIZE", "2")
    assert parallel_settings([]).tensor_parallel_size == 2
    assert parallel_settings(["--tensor-parallel-size", "3"]).tensor_parallel_size == 3
    with pytest.raises(SystemExit):
        parallel_settings(["--tensor-parallel-size", "0"])
