"""Per-sequence recurrent state for biasmed's attention-free models inside vLLM.

vLLM keeps the state of attention-free ("Mamba-like") layers in its cache: each layer that
subclasses ``MambaBase`` declares the shapes and dtypes of its state tensors, vLLM allocates one
slot per running sequence and binds views of that memory to ``layer.kv_cache`` (one tensor per
declared state, ``[num_slots, *shape]``). Each step, the forward context carries, per layer,
metadata saying which tokens of the flat batch belong to which sequence and which slot holds
that sequence's state.

We borrow vLLM's ``LINEAR`` state backend (the one its linear-attention models use): its
metadata gives exactly what an element-wise RNN needs (query_start_loc, seq_lens, and one state
slot per request) and it brings no kernel of its own. :func:`step_groups` turns that metadata
into :class:`StepGroup` batches (sequences of equal length, e.g. all decodes) so the models can
run their ordinary ``[batch, time, features]`` PyTorch recurrences.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from vllm.config import get_current_vllm_config
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum


@dataclass(frozen=True)
class SequenceSlice:
    """One sequence's tokens in the flat batch and where its recurrent state lives."""

    start: int  # first token index in the flat batch
    end: int  # one past the last token
    slot: int  # row of every state tensor in layer.kv_cache (-1: none, dummy runs)
    continues: bool  # True when the slot holds state from earlier tokens (decode, later chunk)


@dataclass(frozen=True)
class StepGroup:
    """Sequences of one length, run together as a ``[len(seqs), length]`` batch."""

    seqs: tuple[SequenceSlice, ...]
    index: torch.Tensor  # long [batch, length]: flat-batch token index of each position
    store: bool  # False in dummy runs: no slot to write

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[tokens, ...]`` -> ``[batch, length, ...]``."""
        return x[self.index.to(x.device)]

    def scatter(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Write ``[batch, length, ...]`` back into the flat ``[tokens, ...]`` tensor."""
        out[self.index.reshape(-1).to(out.device)] = y.reshape(-1, *y.shape[2:]).to(out.dtype)


class RecurrentStateLayer(torch.nn.Module, MambaBase):
    """Base for a layer whose recurrent state vLLM stores, one slot per running sequence.

    Subclasses declare their state shapes (without the slot dimension) and may override
    :meth:`fresh_state` (zeros by default) for a new sequence's initial value.
    """

    def __init__(
        self,
        prefix: str,
        state_shapes: Iterable[tuple[int, ...]],
        state_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self._state_shapes = tuple(tuple(s) for s in state_shapes)
        self._state_dtype = state_dtype
        self.kv_cache: tuple[torch.Tensor, ...] = ()
        # vLLM finds attention-like layers (and binds their cache) through this registry.
        context = get_current_vllm_config().compilation_config.static_forward_context
        if prefix in context:
            raise ValueError(f"duplicate recurrent layer name: {prefix}")
        context[prefix] = self

    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        return MambaAttentionBackendEnum.LINEAR

    def get_state_shape(self) -> tuple[tuple[int, ...], ...]:
        return self._state_shapes

    def get_state_dtype(self) -> tuple[torch.dtype, ...]:
        # float32 whatever the model dtype: the recurrence accumulates over the whole sequence.
        return tuple(self._state_dtype for _ in self._state_shapes)

    def fresh_state(self, k: int) -> torch.Tensor:
        """Initial value of state ``k`` for a new sequence."""
        return torch.zeros(self._state_shapes[k], dtype=self._state_dtype, device=self._device())

    def _device(self) -> torch.device | None:
        return self.kv_cache[0].device if self.kv_cache else None

    def step_groups(self, num_tokens: int) -> list[StepGroup]:
        """This step's sequences for this layer (see :func:`step_groups`)."""
        return step_groups(self.prefix, num_tokens)

    def read_states(self, group: StepGroup) -> list[torch.Tensor]:
        """Each state as ``[batch, *shape]``: the slot's value, or fresh for a new sequence."""
        states = []
        for k in range(len(self._state_shapes)):
            rows = [self.kv_cache[k][s.slot].clone() if s.continues else self.fresh_state(k) for s in group.seqs]
            states.append(torch.stack(rows).to(self._state_dtype))
        return states

    def write_states(self, group: StepGroup, states: list[torch.Tensor]) -> None:
        """Store each sequence's final states (``[batch, *shape]``) in its slot."""
        if not group.store:
            return
        for cache, state in zip(self.kv_cache, states):
            for row, seq in enumerate(group.seqs):
                cache[seq.slot] = state[row].to(cache.dtype)


def step_groups(layer_name: str, num_tokens: int) -> list[StepGroup]:
    """The sequences of this step for one layer, batched by length.

    Without metadata (vLLM's dummy/profiling runs) the whole batch is one fresh sequence whose
    state is not stored. Tokens past the scheduled ones (padding) belong to no group.
    """
    metadata = get_forward_context().attn_metadata
    if isinstance(metadata, dict):
        metadata = metadata.get(layer_name)
    elif isinstance(metadata, list):  # micro-batched runs (not used on CPU)
        metadata = metadata[0].get(layer_name) if metadata else None
    if metadata is None:
        seq = SequenceSlice(0, num_tokens, -1, False)
        return [StepGroup((seq,), torch.arange(num_tokens)[None], store=False)]
    num_reqs = int(metadata.num_decodes + metadata.num_prefills)
    starts = metadata.query_start_loc[: num_reqs + 1].tolist()
    seq_lens = metadata.seq_lens[:num_reqs].tolist()
    slots = metadata.state_indices_tensor[:num_reqs].tolist()
    by_length: dict[int, list[SequenceSlice]] = {}
    for r in range(num_reqs):
        start, end = int(starts[r]), min(int(starts[r + 1]), num_tokens)
        if end <= start:
            continue
        context_len = int(seq_lens[r]) - (int(starts[r + 1]) - start)
        seq = SequenceSlice(start, end, int(slots[r]), context_len > 0)
        by_length.setdefault(end - start, []).append(seq)
    groups = []
    for length, seqs in by_length.items():
        index = torch.tensor([[s.start + t for t in range(length)] for s in seqs], dtype=torch.long)
        groups.append(StepGroup(tuple(seqs), index, store=True))
    return groups
