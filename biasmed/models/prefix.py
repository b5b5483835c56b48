"""Prefix sharing: run each shared token prefix once, then only the differing suffixes.

The 8 bias conditions of a question differ in one inserted sentence; everything before it (the
instruction, the chat template's header, the question stem) is the same tokens. We build a radix
tree (trie with merged single-child chains) over the token sequences of a chunk, keep the internal
nodes whose sharing saves enough work to pay for an extra forward call, and walk the tree: each
kept node's segment is computed once on top of its parent's KV cache, and that cache is expanded
(a stride-0 view, not a copy) across the node's children, which run as one right-padded batch.

Right padding keeps every cache exact: padding sits after a row's real tokens, so a row's cache
sliced to its real length is exactly the cache of that prefix alone, with no hole to mask later.

`build_tree` is pure Python; `score_last` needs torch and an HF causal LM. Log-probs equal the
unshared computation up to floating-point reordering (tests check +-1e-3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

# Keep an internal node only if sharing it saves at least this many token-positions of compute;
# below that, an extra (small, batch-1-past) forward call costs more than it saves.
MIN_SAVED_TOKENS = 48
# The fixed cost of one forward call, in token-positions (measured: SmolLM2 on one CPU thread,
# ~45 ms per call vs ~1.5 ms per token). Batches are cut where padding would cost more than this.
CALL_COST_TOKENS = 30


@dataclass
class Node:
    """A run of tokens shared by every sequence below it."""

    start: int  # absolute position of tokens[0]
    tokens: list[int]
    ends: list[int] = field(default_factory=list)  # sequences that end exactly here
    children: list[Node] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    def n_seqs(self) -> int:
        return len(self.ends) + sum(c.n_seqs() for c in self.children)

    def walk(self) -> Iterator[Node]:
        yield self
        for c in self.children:
            yield from c.walk()


def build_tree(seqs: Sequence[Sequence[int]], share: bool = True, min_saved: int = MIN_SAVED_TOKENS) -> Node:
    """The root (empty, at position 0) of the prefix tree over `seqs` (each must be non-empty).

    With `share=False` (or nothing worth sharing) every sequence is a direct leaf of the root,
    which is plain batched scoring.
    """
    if any(len(s) == 0 for s in seqs):
        raise ValueError("empty token sequence")
    root = Node(0, [])
    if not share:
        by_seq: dict[tuple[int, ...], Node] = {}
        for i, s in enumerate(seqs):
            key = tuple(s)
            if key not in by_seq:
                by_seq[key] = Node(0, list(s))
                root.children.append(by_seq[key])
            by_seq[key].ends.append(i)
        return root
    root.children = _split(seqs, list(range(len(seqs))), 0)
    root.children = _prune(root.children, min_saved)
    return root


def _split(seqs: Sequence[Sequence[int]], idx: list[int], depth: int) -> list[Node]:
    """Radix-tree children for sequences `idx`, which all share tokens [0, depth)."""
    groups: dict[int, list[int]] = {}
    for i in idx:
        groups.setdefault(seqs[i][depth], []).append(i)
    nodes: list[Node] = []
    for members in groups.values():
        first = seqs[members[0]]
        end = min(len(seqs[i]) for i in members)
        for i in members[1:]:
            s = seqs[i]
            j = depth + 1
            while j < end and s[j] == first[j]:
                j += 1
            end = j
        node = Node(depth, list(first[depth:end]))
        node.ends = [i for i in members if len(seqs[i]) == end]
        rest = [i for i in members if len(seqs[i]) > end]
        if rest:
            node.children = _split(seqs, rest, end)
        nodes.append(node)
    return nodes


def _prune(nodes: list[Node], min_saved: int) -> list[Node]:
    """Dissolve internal nodes whose sharing saves too little: their tokens move into children."""
    out: list[Node] = []
    for node in nodes:
        # dissolving moves the segment into each branch (child, or the sequences ending here)
        branches = len(node.children) + (1 if node.ends else 0)
        if node.children and (branches - 1) * len(node.tokens) < min_saved:
            # pass the segment down: each child (and each sequence ending here) now starts earlier
            moved = [Node(node.start, node.tokens + c.tokens, c.ends, c.children) for c in node.children]
            if node.ends:
                moved.append(Node(node.start, list(node.tokens), node.ends, []))
            out.extend(_prune(moved, min_saved))
        else:
            node.children = _prune(node.children, min_saved)
            out.append(node)
    return out


def tree_cost(root: Node) -> int:
    """Token positions the tree computes (the unshared cost is the sum of the sequence lengths)."""
    return sum(len(n.tokens) for n in root.walk())


# --- execution (torch) -------------------------------------------------------------------------

KV = list[tuple[Any, Any]]  # per layer (keys, values), each (batch, heads, positions, head_dim)


def score_last(
    model: Any,
    seqs: Sequence[Sequence[int]],
    batch_size: int,
    share: bool = True,
    on_last: Callable[[list[int], Any], None] | None = None,
    on_kv: Callable[[list[int], KV], None] | None = None,
    min_saved: int = MIN_SAVED_TOKENS,
    kv_ok: bool = True,
) -> None:
    """Run `seqs` through `model`, sharing prefixes; report each sequence's last-token logits.

    `on_last(seq_indices, logits)` gets float32 logits (vocab,) for the sequences ending at a node.
    `on_kv(seq_indices, kv)` (optional) gets the batch-1 KV cache of those whole sequences, which
    generation continues from. `kv_ok=False` (a model without a standard KV cache): no sharing,
    no caches, only right-padded batches of whole sequences.
    """
    root = build_tree(seqs, share and kv_ok, min_saved)
    if not kv_ok:
        _run_plain(model, root, batch_size, on_last)
        return
    _run_children(model, root, None, 0, batch_size, on_last, on_kv)


def plan_batches(lengths: Sequence[int], batch_size: int, call_cost: int = CALL_COST_TOKENS) -> list[list[int]]:
    """Indices grouped into batches of at most `batch_size`, in length order, cut where the
    padding a longer neighbour would force costs more than another forward call. Minimizes
    sum(batch rows x longest row) + call_cost x batches (exact, by dynamic programming)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0] + [1 << 62] * n  # best[j]: cost of the first j (sorted) items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - batch_size), j):
            c = best[i] + (j - i) * lengths[order[j - 1]] + call_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def _run_children(
    model: Any,
    node: Node,
    kv: KV | None,
    past_len: int,
    batch_size: int,
    on_last: Callable | None,
    on_kv: Callable | None,
) -> None:
    for group in plan_batches([len(c.tokens) for c in node.children], batch_size):
        batch = [node.children[i] for i in group]
        need_kv = on_kv is not None or any(c.children for c in batch)
        logits, new_kv = forward_segments(model, [c.tokens for c in batch], kv, past_len, need_kv)
        for row, child in enumerate(batch):
            end = past_len + len(child.tokens)
            child_kv = slice_kv(new_kv, row, end) if new_kv is not None else None
            if child.ends:
                if on_last is not None:
                    on_last(child.ends, logits[row])
                if on_kv is not None and child_kv is not None:
                    on_kv(child.ends, child_kv)
            if child.children:
                _run_children(model, child, child_kv, end, batch_size, on_last, on_kv)
        del logits, new_kv


def _run_plain(model: Any, root: Node, batch_size: int, on_last: Callable | None) -> None:
    """Whole sequences, right-padded (a causal model's last real token never sees the padding)."""
    import torch

    for group in plan_batches([len(c.tokens) for c in root.children], batch_size):
        batch = [root.children[i] for i in group]
        ids, mask, _, last = _pad_right(model, [c.tokens for c in batch], 0)
        kw: dict[str, Any] = {"attention_mask": mask.to(model.device)}
        arg = logits_arg(model)
        if arg and bool((last == last.max()).all()):
            kw[arg] = 1  # every row ends at the last column
        out = model(input_ids=ids.to(model.device), use_cache=False, **kw)
        logits = out.logits
        pick = last if logits.shape[1] > 1 else torch.zeros_like(last)
        logits = logits[torch.arange(len(batch)), pick.to(logits.device)].float()
        for row, child in enumerate(batch):
            if on_last is not None:
                on_last(child.ends, logits[row])


def _pad_right(model: Any, segments: Sequence[Sequence[int]], past_len: int) -> tuple[Any, Any, Any, Any]:
    import torch

    n = len(segments)
    width = max(len(s) for s in segments)
    ids = torch.full((n, width), _pad_id(model), dtype=torch.long)
    mask = torch.zeros((n, past_len + width), dtype=torch.long)
    mask[:, :past_len] = 1
    for i, s in enumerate(segments):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, past_len : past_len + len(s)] = 1
    positions = torch.arange(past_len, past_len + width, dtype=torch.long).expand(n, width)
    last = torch.tensor([len(s) - 1 for s in segments])
    return ids, mask, positions, last


def forward_segments(
    model: Any, segments: Sequence[Sequence[int]], kv: KV | None, past_len: int, need_kv: bool
) -> tuple[Any, KV | None]:
    """One forward over right-padded `segments` on top of a shared batch-1 cache `kv`.

    Returns float32 logits at each segment's last token (batch, vocab), and the new cache
    (batch, ..., past_len + longest segment) when `need_kv`.
    """
    import torch

    device = model.device
    n = len(segments)
    ids, mask, positions, last = _pad_right(model, segments, past_len)
    # the shared prefix's cache, seen n times through a stride-0 view (no copy)
    past = make_cache(model, [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv]) if kv else None
    keep, pick = _keep_positions(model, last)
    out = call(model, ids.to(device), mask.to(device), positions.to(device), past, need_kv, **keep)
    logits = out.logits  # (n, kept, vocab)
    if pick is None:  # per-row positions were asked for: check the model understood them
        if logits.shape[:2] == (n, 1):
            logits = logits[:, 0].float()
        else:  # it read the (n, 1) tensor some other way: never again for this model
            _set_attr(model, "_biasmed_rowwise_keep", False)
            return forward_segments(model, segments, kv, past_len, need_kv)
    else:
        logits = logits[torch.arange(n), pick.to(logits.device)].float()
    new_kv = kv_pairs(out_cache(out)) if need_kv else None
    return logits, new_kv


def call(model: Any, ids: Any, mask: Any, positions: Any, cache: Any, use_cache: bool, **kw: Any) -> Any:
    """model(...) with the cache argument under its name in this transformers version."""
    if cache is not None:
        kw[cache_arg(model)] = cache
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=use_cache, **kw)


def out_cache(out: Any) -> Any:
    for name in ("cache", "past_key_values", "rnn_state"):  # rnn_state: SpikeGPT's recurrent state
        cache = getattr(out, name, None)
        if cache is not None:
            return cache
    return None


def cache_arg(model: Any) -> str:
    """`cache` since transformers 5.2x, `past_key_values` before; `rnn_state` for SpikeGPT."""
    params = _forward_params(model)
    if "cache" in params:
        return "cache"
    return "rnn_state" if "rnn_state" in params and "past_key_values" not in params else "past_key_values"


def _forward_params(model: Any) -> dict[str, Any]:
    cached = getattr(model, "_biasmed_forward_params", None)
    if cached is None:
        import inspect

        cached = dict(inspect.signature(model.forward).parameters)
        try:
            model._biasmed_forward_params = cached
        except AttributeError:
            pass
    return cached


def _pad_id(model: Any) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    if isinstance(pad, list):
        pad = pad[0] if pad else None
    return int(pad) if pad is not None else 0


def logits_arg(model: Any) -> str | None:
    """The name of the keep-only-these-logits argument, when the model has one."""
    return "logits_to_keep" if "logits_to_keep" in _forward_params(model) else None


def _keep_positions(model: Any, last: Any) -> tuple[dict[str, Any], Any]:
    """Ask for logits only at the rows' last positions (the vocabulary projection is the single
    biggest matrix of a small model). Returns the argument and `pick`: where row i's last
    position lands in the kept logits, or None for "one per row, in order"."""
    import torch

    arg = logits_arg(model)
    if arg is None:
        return {}, last
    if bool((last == last.max()).all()):  # every row ends at the last column
        return {arg: 1}, torch.zeros_like(last)
    if "Tensor" not in str(_forward_params(model)[arg].annotation):  # ints only: keep them all
        return {}, last
    if _rowwise_keep(model):  # transformers >= 5: a (batch, 1) tensor keeps one position per row
        return {arg: last[:, None].to(model.device)}, None
    uniq, pick = torch.unique(last, sorted=True, return_inverse=True)  # every row gets them all
    return {arg: uniq.to(model.device)}, pick


def _rowwise_keep(model: Any) -> bool:
    ok = getattr(model, "_biasmed_rowwise_keep", None)
    if ok is None:
        import transformers.modeling_utils as mu

        ok = hasattr(mu, "slice_logits_to_keep")  # the helper that reads 2-D position tensors
        _set_attr(model, "_biasmed_rowwise_keep", ok)
    return bool(ok)


def _set_attr(model: Any, name: str, value: Any) -> None:
    try:
        setattr(model, name, value)
    except AttributeError:
        pass


# --- KV cache plumbing (transformers' Cache classes changed across versions) ------------------


def kv_pairs(cache: Any) -> KV:
    """Per-layer (keys, values) tensors of a transformers cache (v5 `.layers`, v4 lists, tuples)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]


def make_cache(model: Any, pairs: KV) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(ddp_cache_data=pairs, config=model.config)
    except TypeError:  # older transformers
        return DynamicCache.from_legacy_cache(tuple(pairs))  # type: ignore[attr-defined]  # older transformers


def slice_kv(kv: KV, row: int, length: int) -> KV:
    """Row `row` of a batched cache, its first `length` positions, as a batch-1 cache (a view)."""
    return [(k[row : row + 1, :, :length], v[row : row + 1, :, :length]) for k, v in kv]


def supports_sharing(model: Any) -> bool:
    """Known exclusions: sliding-window attention (its cache drops old positions) and
    encoder-decoder models. Anything else must also pass `probe_kv_cache`."""
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        return False
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    types = getattr(text, "layer_types", None)
    if types is not None:
        return set(types) <= {"full_attention"}
    return not (getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True))


def probe_kv_cache(model: Any, tol: float = 0.05) -> bool:
    """Does splitting a sequence into prefix (cached, expanded) + suffixes give the logits of the
    whole? A recurrent model, a custom cache or odd position handling fails this, and then runs
    without prefix sharing. Tiny: three forward calls over 12 tokens."""
    import torch

    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 16:
        return False
    ids = [(7 * i + 3) % (vocab - 1) + 1 for i in range(12)]
    other = ids[:7] + [(11 * i + 5) % (vocab - 1) + 1 for i in range(3)]
    try:
        with torch.inference_mode():
            whole, _ = forward_segments(model, [ids, other], None, 0, False)
            _, kv = forward_segments(model, [ids[:7]], None, 0, True)
            split, _ = forward_segments(model, [ids[7:], other[7:]], kv, 7, False)
    except Exception:  # noqa: BLE001 - any failure means: do not share
        return False
    a, b = torch.log_softmax(whole, -1), torch.log_softmax(split, -1)
    return bool(torch.isfinite(b).all()) and float((a - b).abs().max()) < tol
