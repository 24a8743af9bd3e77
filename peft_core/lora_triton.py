# mypy: disable-error-code="no-untyped-def"
# (Triton reads a kernel's annotations as its own type hints: its parameters stay bare.)
"""``per_row``'s Triton kernel for LoRA layers: SGMV-style shrink and expand, fp32 in between.

For the rows of each adapter (a *segment*; rows sorted by adapter, as Punica's SGMV and vLLM's
``lora_shrink``/``lora_expand`` sort tokens)::

    low_rank[t, :r]        = x[t] @ A[slot]           shrink: float32 accumulator, stored in float32
    y[t, start:stop]      += low_rank[t] @ B[slot]    expand: float32 accumulator, added into y

Rows are not moved: each program reads its tokens' positions from ``token_ids`` (sorted by
adapter), so neither ``x`` nor the update is copied into adapter order and back, as
``torch._grouped_mm`` needs; rows without an adapter (slot 0) are never read or written. The
adapters' weights stay float32 (as they trained) and, for a half-precision model, the products
run in TF32 on tensor cores, so nothing between ``x`` and ``y`` is rounded to bf16
(half-precision intermediates cost vLLM accuracy, vLLM #2893); a float32 model's run in full
float32.

Triton is imported only when this kernel is asked for: CUDA builds of torch bring it; CPU-only
installs test it through Triton's interpreter (``TRITON_INTERPRET=1``, float32 and float16 only:
the interpreter reads bfloat16 as zeros).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["Segments", "segments", "shrink_expand"]


@dataclass(frozen=True)
class Segments:
    """Where each adapter's tokens are, for one batch shape: ``token_ids`` (token positions in
    the flattened batch, grouped by adapter), and per used adapter its ``start`` in
    ``token_ids``, its ``length`` and its ``slot`` in the stacked weights."""

    token_ids: Tensor  # int32 (tokens with an adapter,)
    start: Tensor  # int32 (segments,)
    length: Tensor  # int32 (segments,)
    slot: Tensor  # int32 (segments,)
    longest: int  # tokens in the longest segment (the grid's first dimension)

    @classmethod
    def of(cls, slots: list[int], tokens_per_row: int, device: torch.device) -> Segments:
        """Segments for rows whose adapters are ``slots`` (0: none), each ``tokens_per_row``
        long; worked out on the host, then copied once."""
        used = sorted({s for s in slots if s})
        rows_of = {s: [row for row, own in enumerate(slots) if own == s] for s in used}
        token_ids: list[int] = []
        starts: list[int] = []
        lengths: list[int] = []
        for slot in used:
            starts.append(len(token_ids))
            for row in rows_of[slot]:
                token_ids.extend(range(row * tokens_per_row, (row + 1) * tokens_per_row))
            lengths.append(len(token_ids) - starts[-1])

        def tensor(values: list[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.int32, device=device)

        longest = max(lengths, default=0)
        return cls(tensor(token_ids), tensor(starts), tensor(lengths), tensor(used), longest)


@functools.lru_cache(maxsize=64)
def segments(slots: tuple[int, ...], tokens_per_row: int, device: torch.device) -> Segments:
    """:meth:`Segments.of`, once for all the layers of a model (they mostly route alike) and
    for every later batch of the same rows and length (each decoding step's)."""
    return Segments.of(list(slots), tokens_per_row, device)


def shrink_expand(
    x: Tensor, y: Tensor, a: Tensor, b: Tensor, segments: Segments, *, column: int = 0
) -> Tensor:
    """``y`` with each segment's LoRA update added at columns ``column:column + b.shape[2]``.

    ``x`` (rows, tokens, in) or (rows, in); ``y`` (rows, tokens, out) likewise; ``a`` (slot, in,
    r) and ``b`` (slot, r, width) as :func:`~peft_core.methods.lora._row_major_stack` gives them
    (slot 0 unused). ``y`` is updated in place when autograd is off (``per_row`` is for inference),
    else a copy is.
    """
    if segments.longest == 0:
        return y
    out = y if not torch.is_grad_enabled() else y.clone()
    inputs = x.reshape(-1, x.shape[-1]).contiguous()
    outputs = out.view(-1, out.shape[-1])  # the base layer's fresh output: contiguous
    rank, width = a.shape[2], b.shape[2]
    block_r = max(16, triton.next_power_of_2(rank))  # tl.dot's smallest tile side is 16
    block_m = 16 if segments.longest <= 16 else 64
    low_rank = torch.empty(inputs.shape[0], block_r, dtype=torch.float32, device=x.device)
    segment_count = segments.slot.numel()
    tiles = triton.cdiv(segments.longest, block_m)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    # TF32 products hold a half-precision model's inputs exactly (bf16 has fewer mantissa bits);
    # a float32 model asked for float32: on the H200, TF32 put its rows 1.9e-4 from each
    # adapter run alone, where the other kernels stay within 1e-4
    precision = "ieee" if interpreted or x.dtype == torch.float32 else "tf32"
    _shrink[(tiles, segment_count)](
        inputs, a, low_rank, segments.token_ids, segments.start, segments.length, segments.slot,
        inputs.shape[1], rank, inputs.stride(0), a.stride(0), a.stride(1),
        BLOCK_M=block_m, BLOCK_K=64, BLOCK_R=block_r, PRECISION=precision,
    )  # fmt: skip
    block_n = 64
    _expand[(tiles, triton.cdiv(width, block_n), segment_count)](
        low_rank, b, outputs, segments.token_ids, segments.start, segments.length, segments.slot,
        rank, width, column, outputs.stride(0), b.stride(0), b.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_R=block_r, PRECISION=precision,
    )  # fmt: skip
    return out


@triton.jit
def _tokens_of(tile, segment, token_ids, start, length, BLOCK_M: tl.constexpr):  # noqa: PLR0917
    """A program's ``BLOCK_M`` tokens of its segment: int64 positions in the flattened batch,
    and which of them are inside the segment."""
    positions = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = positions < tl.load(length + segment)
    tokens = tl.load(token_ids + tl.load(start + segment) + positions, mask=valid, other=0)
    return tokens.to(tl.int64), valid


# Triton kernels take their arguments positionally.
@triton.jit
def _shrink(  # noqa: PLR0917
    x, a, low_rank, token_ids, start, length, slot,
    in_features, rank, x_row_stride, a_slot_stride, a_in_stride,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    tile, segment = tl.program_id(0), tl.program_id(1)
    if tile * BLOCK_M >= tl.load(length + segment):
        return  # past the end of this adapter's tokens
    tokens, valid = _tokens_of(tile, segment, token_ids, start, length, BLOCK_M)
    weights = a + tl.load(slot + segment).to(tl.int64) * a_slot_stride
    ranks = tl.arange(0, BLOCK_R)
    # tl.full, not tl.zeros: zeros is a @triton.jit helper, made compiled or interpreted when
    # triton is first imported (torchao may import it before a test asks for the interpreter)
    acc = tl.full((BLOCK_M, BLOCK_R), 0.0, dtype=tl.float32)
    for k in range(0, in_features, BLOCK_K):
        columns = k + tl.arange(0, BLOCK_K)
        rows = tl.load(
            x + tokens[:, None] * x_row_stride + columns[None, :],
            mask=valid[:, None] & (columns[None, :] < in_features), other=0.0,
        )  # fmt: skip
        tile_a = tl.load(
            weights + columns[:, None] * a_in_stride + ranks[None, :],
            mask=(columns[:, None] < in_features) & (ranks[None, :] < rank), other=0.0,
        )  # fmt: skip
        acc = tl.dot(rows.to(tl.float32), tile_a.to(tl.float32), acc, input_precision=PRECISION)
    tl.store(
        low_rank + tokens[:, None] * BLOCK_R + ranks[None, :], acc,
        mask=valid[:, None],
    )  # fmt: skip


@triton.jit
def _expand(  # noqa: PLR0917
    low_rank, b, y, token_ids, start, length, slot,
    rank, width, column, y_row_stride, b_slot_stride, b_rank_stride,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    tile, block, segment = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if tile * BLOCK_M >= tl.load(length + segment):
        return  # past the end of this adapter's tokens
    tokens, valid = _tokens_of(tile, segment, token_ids, start, length, BLOCK_M)
    weights = b + tl.load(slot + segment).to(tl.int64) * b_slot_stride
    ranks = tl.arange(0, BLOCK_R)
    columns = block * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = columns < width
    low = tl.load(
        low_rank + tokens[:, None] * BLOCK_R + ranks[None, :], mask=valid[:, None], other=0.0
    )
    tile_b = tl.load(
        weights + ranks[:, None] * b_rank_stride + columns[None, :],
        mask=(ranks[:, None] < rank) & inside[None, :], other=0.0,
    )  # fmt: skip
    update = tl.dot(low, tile_b.to(tl.float32), input_precision=PRECISION)
    places = y + tokens[:, None] * y_row_stride + column + columns[None, :]
    mask = valid[:, None] & inside[None, :]
    before = tl.load(places, mask=mask, other=0.0)
    tl.store(places, (before.to(tl.float32) + update).to(before.dtype), mask=mask)
