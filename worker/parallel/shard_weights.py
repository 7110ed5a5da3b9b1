"""Feed a model only this rank's slices of a checkpoint, without reading the rest.

Each TP parameter's ``weight_loader`` takes the FULL tensor and cuts out its shard with ``narrow``
(or a dim-0 slice). The "full tensor" handed over here is a ``LazyCheckpointTensor``: its
``narrow`` reads just that slice from the checkpoint (safetensors reads only those bytes), so the
sharding rules stay in the layers and a rank reads about 1/world_size of the weights.

Which tensors are lazy: every matrix of a Llama-family model (embeddings, LM head, q/k/v/o,
gate/up/down) is sharded under TP; the vectors (norm weights, biases) are small and read whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import torch

if TYPE_CHECKING:
    from worker.loader.checkpoint import BaseCheckpoint


class LazyCheckpointTensor:
    """Stands in for a checkpoint tensor; reads only what ``narrow`` or a dim-0 slice asks for."""

    def __init__(self, checkpoint: BaseCheckpoint, name: str, dtype: torch.dtype) -> None:
        self._checkpoint = checkpoint
        self.name = name
        self.dtype = dtype
        self.shape = torch.Size(checkpoint.tensor_shape(name))

    def to(self, dtype: torch.dtype) -> LazyCheckpointTensor:
        return self if dtype == self.dtype else LazyCheckpointTensor(self._checkpoint, self.name, dtype)

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        return self._checkpoint.get_slice(self.name, dim, start, start + length).to(self.dtype)

    def __getitem__(self, rows: slice) -> torch.Tensor:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("only contiguous dim-0 slices of a checkpoint tensor are supported")
        start, stop, _ = rows.indices(self.shape[0])
        return self.narrow(0, start, max(0, stop - start))


def rank_weights(checkpoint: BaseCheckpoint, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for ``LlamaForCausalLM.load_weights`` on a rank of a TP group.

    Matrices come lazy (the weight loaders only call ``.to``, ``.narrow``, ``[rows]`` and
    ``.shape`` on them, which LazyCheckpointTensor provides); vectors come whole.
    """
    for name in checkpoint.tensor_names():
        if len(checkpoint.tensor_shape(name)) >= 2:
            yield name, cast(torch.Tensor, LazyCheckpointTensor(checkpoint, name, dtype))
        else:
            yield name, checkpoint.get_tensor(name).to(dtype)
