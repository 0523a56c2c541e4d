"""The batching plan: which samples form each micro-batch of an epoch, for every rank.

Every rank computes the same global list of micro-batches from the same lengths and seed, and takes
micro-batches `rank, rank + W, ...`: samples are split across ranks with no duplicates and no gaps,
and every rank gets the same number of micro-batches (DDP and FSDP need equal step counts). The
DataLoader then hands a rank's micro-batches to its workers in turn and returns them in order, so
the position in the epoch is one number (micro-batches done), and resuming from it does not depend
on the worker count.

A micro-batch is a tuple of rows and a row a tuple of sample indices: one sample per row, except in
`packed` mode, where a row concatenates several samples (the model keeps them apart).

Modes (`batching`):
  random          shuffled, `micro_batch_size` samples (the tail spread evenly, never above it)
  length_grouped  LLaVA's modality-length grouping: image and text-only samples apart, each sorted
                  by length within megabatches of world x micro batch x `window`, micro batches of
                  `micro_batch_size` (the leftovers of the two modalities form the last, smaller ones)
  token_budget    variable batch size: samples sorted by length, as many per micro-batch as fit in
                  `max_tokens` computed tokens (rows x longest row)
  packed          samples packed best-fit into rows of `pack_length` tokens, `max_tokens //
                  pack_length` rows per micro-batch
The first two reshuffle every epoch. The token modes fix the grouping once per seed (the micro-batch
count, hence the LR schedule, must not change between epochs) and shuffle the micro-batch order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BATCHING = ("random", "length_grouped", "token_budget", "packed")
Batch = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class BatchingConfig:
    batching: str = "random"
    micro_batch_size: int = 8
    max_tokens: int | None = None  # token modes: computed tokens per micro-batch (default micro batch x max_length)
    pack_length: int | None = None  # packed: row length (default max_length)
    window: int | None = None  # samples sorted together (token modes; null: whole epoch) / megabatch factor
    shuffle: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.batching not in BATCHING:
            raise ValueError(f"unknown batching {self.batching!r}; valid: {list(BATCHING)}")
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")


def epoch_order(indices: np.ndarray, seed: int, epoch: int, block_size: int = 1, shuffle: bool = True) -> np.ndarray:
    """A permutation of `indices` for the epoch. With `block_size` > 1 (streaming shards) whole
    blocks of consecutive records are permuted and records are mixed within groups of 8 blocks, so a
    worker reads a few shards at a time instead of one record from every shard."""
    if not shuffle or len(indices) == 0:
        return indices
    rng = np.random.default_rng([seed, epoch])
    if block_size <= 1:
        return rng.permutation(indices)
    blocks = indices // block_size
    unique = np.unique(blocks)
    block_rank = np.empty(int(unique.max()) + 1, np.int64)
    block_rank[unique] = rng.permutation(len(unique))
    return indices[np.lexsort((rng.random(len(indices)), block_rank[blocks] // 8))]


def _rows(chunks) -> list[Batch]:
    return [tuple((int(i),) for i in c) for c in chunks if len(c)]


def _random(order, n_batches) -> list[Batch]:
    return _rows(np.array_split(order, n_batches))


def _length_grouped(order, lengths, images, cfg, world) -> list[Batch]:
    """Per modality, megabatches of world x micro batch x window samples sorted by length, each cut
    into micro-batches of exactly `micro_batch_size` (consecutive ones form a global step: ranks get
    similar lengths). What is left of both modalities forms the last, smaller micro-batches."""
    size = cfg.micro_batch_size
    mega = world * size * (cfg.window or 1)
    full, rest = [], []
    for part in (order[images[order] > 0], order[images[order] == 0]):  # modalities apart, as LLaVA
        n_full = len(part) // mega * mega
        for m in range(0, n_full, mega):
            chunk = part[m:m + mega]
            full += _rows(np.split(chunk[np.argsort(-lengths[chunk], kind="stable")], mega // size))
        rest.append(part[n_full:])
    rest = np.concatenate(rest)
    rest = rest[np.argsort(-lengths[rest], kind="stable")]
    tail = _rows(np.array_split(rest, -(-len(rest) // size))) if len(rest) else []
    try:
        return full + balance(tail, world, lengths)
    except ValueError:  # fewer leftovers than ranks: split full micro-batches too
        return balance(full + tail, world, lengths)


def _token_budget(order, lengths, cfg, max_tokens) -> list[Batch]:
    batches = []
    for window in _windows(order, cfg.window):
        window = window[np.argsort(-lengths[window], kind="stable")]
        start = 0
        while start < len(window):
            longest = max(1, int(lengths[window[start]]))
            n = max(1, max_tokens // longest)
            batches.append(tuple((int(i),) for i in window[start:start + n]))
            start += n
    return batches


def _pack_rows(window, lengths, capacity) -> list[list[int]]:
    """Best-fit decreasing: each sample (longest first) goes to the open row it fills best."""
    rows: list[list[int]] = []
    by_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # open rows by remaining room
    has_room = np.zeros(capacity + 1, bool)
    for i in window[np.argsort(-lengths[window], kind="stable")]:
        need = min(int(lengths[i]), capacity)
        fits = np.flatnonzero(has_room[need:])
        if len(fits):
            room = need + int(fits[0])
            r = by_room[room].pop()
            has_room[room] = bool(by_room[room])
        else:
            r, room = len(rows), capacity
            rows.append([])
        rows[r].append(int(i))
        left = room - need
        if left > 0:
            by_room[left].append(r)
            has_room[left] = True
    return rows


def _packed(order, lengths, cfg, max_tokens, capacity) -> list[Batch]:
    per_batch = max(1, max_tokens // capacity)
    batches = []
    for window in _windows(order, cfg.window):
        rows = _pack_rows(window, lengths, capacity)
        rows.sort(key=lambda r: -sum(int(lengths[i]) for i in r))  # similar fill in one micro-batch
        batches += [tuple(tuple(r) for r in rows[k:k + per_batch]) for k in range(0, len(rows), per_batch)]
    return batches


def _windows(order, window):
    window = window or len(order)
    return [order[k:k + window] for k in range(0, len(order), window)]


def _cost(batch: Batch, lengths) -> int:
    return len(batch) * max(sum(int(lengths[i]) for i in row) for row in batch)


def _split(batch: Batch) -> tuple[Batch, Batch] | None:
    if len(batch) >= 2:
        return batch[: len(batch) // 2], batch[len(batch) // 2:]
    row = batch[0]
    if len(row) >= 2:  # one packed row: two rows of half the samples each
        return (row[: len(row) // 2],), (row[len(row) // 2:],)
    return None


def balance(batches: list[Batch], world: int, lengths) -> list[Batch]:
    """Split the costliest micro-batches until their number is a multiple of the world size, so
    every rank steps the same number of times (no sample is repeated or dropped to get there)."""
    batches = list(batches)
    while len(batches) % world:
        order = sorted(range(len(batches)), key=lambda k: -_cost(batches[k], lengths))
        for k in order:
            halves = _split(batches[k])
            if halves:
                batches[k:k + 1] = list(halves)
                break
        else:
            raise ValueError(f"{sum(len(r) for b in batches for r in b)} sample(s) cannot be spread over {world} ranks")
    return batches


def _shuffle_steps(batches: list[Batch], world: int, cfg: BatchingConfig, epoch_seed) -> list[Batch]:
    if not cfg.shuffle:
        return batches
    rng = np.random.default_rng(epoch_seed)
    steps = [batches[k:k + world] for k in range(0, len(batches), world)]
    return [b for s in rng.permutation(len(steps)) for b in steps[s]]


@dataclass
class Plan:
    batches: list[Batch]  # global micro-batches; rank r takes batches[r::world]
    world: int
    real_tokens: int  # sum of sample lengths (visual tokens included)
    computed_tokens: int  # sum over micro-batches of rows x longest row

    @property
    def efficiency(self) -> float:
        return self.real_tokens / max(1, self.computed_tokens)

    @property
    def num_samples(self) -> int:
        return sum(len(r) for b in self.batches for r in b)

    def for_rank(self, rank: int) -> list[Batch]:
        return self.batches[rank::self.world]


def make_plan(indices: np.ndarray, lengths: np.ndarray, images: np.ndarray, cfg: BatchingConfig, world: int,
              epoch: int, max_length: int, block_size: int = 1) -> Plan:
    """`indices`: the usable records; `lengths`, `images`: per record (indexed by record id);
    lengths are clipped at `max_length` (over-long samples are truncated to it)."""
    if len(indices) < world:
        raise ValueError(f"{len(indices)} usable sample(s) cannot feed {world} ranks")
    lengths = np.minimum(lengths, max_length)
    max_tokens = cfg.max_tokens or cfg.micro_batch_size * max_length
    if cfg.batching in ("random", "length_grouped"):
        order = epoch_order(indices, cfg.seed, epoch, block_size, cfg.shuffle)
        n_batches = -(-len(indices) // (world * cfg.micro_batch_size)) * world
        batches = (_random(order, n_batches) if cfg.batching == "random"
                   else _length_grouped(order, lengths, images, cfg, world))
        if cfg.batching == "length_grouped" and cfg.shuffle:
            batches = _shuffle_steps(batches, world, cfg, [cfg.seed, epoch, 7])
    else:
        if max_tokens < max_length:
            raise ValueError(f"max_tokens {max_tokens} is below max_length {max_length}: the longest sample would not fit")
        order = epoch_order(indices, cfg.seed, 0, block_size, cfg.shuffle)  # grouping fixed per seed
        if cfg.batching == "token_budget":
            batches = _token_budget(order, lengths, cfg, max_tokens)
        else:
            capacity = cfg.pack_length or max_length
            if capacity < max_length:
                raise ValueError(f"pack_length {capacity} is below max_length {max_length}")
            batches = _packed(order, lengths, cfg, max_tokens, capacity)
        batches = balance(batches, world, lengths)
        # Steps of similar cost (balanced ranks), in a fresh order every epoch.
        batches.sort(key=lambda b: -_cost(b, lengths))
        batches = _shuffle_steps(batches, world, cfg, [cfg.seed, epoch, 11])
    real = int(lengths[indices].sum())
    computed = sum(_cost(b, lengths) for b in batches)
    return Plan(batches, world, real, computed)
