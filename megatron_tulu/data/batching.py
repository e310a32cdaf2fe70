"""Token batches for causal-LM losses: padded rows and packed rows, plus their attention masks.

Every batch is shifted: ``labels[:, t]`` is the token after ``tokens[:, t]``, and
``loss_mask[:, t]`` says whether that label is trained on (an assistant-response token of the
same document). ``position_ids`` restart at 0 for each document and ``document_ids`` number the
documents of a row from 0, with ``PAD_DOCUMENT_ID`` (-1) on padding; from them the model side
builds a block-diagonal causal mask (:func:`packed_attention_mask`) or the ``cu_seqlens`` of a
variable-length attention kernel (:func:`cu_seqlens_from_document_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

PAD_DOCUMENT_ID = -1

# One document: its token ids and, per token, whether that token is a response (loss) token.
Document = tuple[Sequence[int], Sequence[bool]]


@dataclass(frozen=True)
class SFTBatch:
    tokens: torch.Tensor  # [b, s] int64
    labels: torch.Tensor  # [b, s] int64, the next token
    loss_mask: torch.Tensor  # [b, s] float32, 1.0 where the label is trained on
    position_ids: torch.Tensor  # [b, s] int64, restarting at 0 per document
    document_ids: torch.Tensor  # [b, s] int64, 0.. per row, PAD_DOCUMENT_ID on padding

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum().item())

    def to(self, device: torch.device | str) -> SFTBatch:
        return SFTBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def padded_length(
    num_positions: int, *, pad_to: int | None = None, pad_to_multiple_of: int = 1
) -> int:
    """The padded length for rows of up to ``num_positions`` positions."""
    if pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of} must be >= 1")
    if pad_to is not None:
        if pad_to < num_positions:
            raise ValueError(
                f"pad_to={pad_to} is shorter than the longest row ({num_positions} positions); "
                "raise pad_to or lower the data's max_length"
            )
        num_positions = pad_to
    return _round_up(max(num_positions, 1), pad_to_multiple_of)


def collate_padded(
    documents: Sequence[Document],
    *,
    pad_id: int,
    pad_to: int | None = None,
    pad_to_multiple_of: int = 1,
) -> SFTBatch:
    """One document per row, right-padded. A document of n tokens fills n - 1 positions."""
    if not documents:
        raise ValueError("cannot collate an empty list of documents")
    length = padded_length(
        max(len(ids) - 1 for ids, _ in documents),
        pad_to=pad_to,
        pad_to_multiple_of=pad_to_multiple_of,
    )
    b = len(documents)
    tokens = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((b, length), dtype=torch.float32)
    position_ids = torch.zeros((b, length), dtype=torch.long)
    document_ids = torch.full((b, length), PAD_DOCUMENT_ID, dtype=torch.long)
    for row, (ids, mask) in enumerate(documents):
        n = len(ids) - 1
        if n <= 0:
            continue
        ids_t = torch.as_tensor(list(ids), dtype=torch.long)
        tokens[row, :n] = ids_t[:-1]
        labels[row, :n] = ids_t[1:]
        loss_mask[row, :n] = torch.as_tensor(list(mask[1:]), dtype=torch.float32)
        position_ids[row, :n] = torch.arange(n)
        document_ids[row, :n] = 0
    return SFTBatch(tokens, labels, loss_mask, position_ids, document_ids)


def collate_packed(rows: Sequence[Sequence[Document]], *, seq_length: int, pad_id: int) -> SFTBatch:
    """Several documents per row: each row holds ``seq_length + 1`` tokens before shifting.

    A label that belongs to the next document (or to padding) carries no loss, whatever the
    documents' masks say.
    """
    if not rows:
        raise ValueError("cannot collate an empty list of packed rows")
    width = seq_length + 1
    b = len(rows)
    full_ids = torch.full((b, width), pad_id, dtype=torch.long)
    full_mask = torch.zeros((b, width), dtype=torch.bool)
    full_pos = torch.zeros((b, width), dtype=torch.long)
    full_doc = torch.full((b, width), PAD_DOCUMENT_ID, dtype=torch.long)
    for row, documents in enumerate(rows):
        total = sum(len(ids) for ids, _ in documents)
        if total > width:
            raise ValueError(
                f"packed row {row} holds {total} tokens, more than seq_length + 1 = {width}"
            )
        start = 0
        for doc_id, (ids, mask) in enumerate(documents):
            end = start + len(ids)
            full_ids[row, start:end] = torch.as_tensor(list(ids), dtype=torch.long)
            full_mask[row, start:end] = torch.as_tensor(list(mask), dtype=torch.bool)
            full_pos[row, start:end] = torch.arange(len(ids))
            full_doc[row, start:end] = doc_id
            start = end
    same_document = full_doc[:, :-1] == full_doc[:, 1:]
    loss = full_mask[:, 1:] & same_document & (full_doc[:, 1:] != PAD_DOCUMENT_ID)
    return SFTBatch(
        tokens=full_ids[:, :-1].contiguous(),
        labels=full_ids[:, 1:].contiguous(),
        loss_mask=loss.to(torch.float32),
        position_ids=full_pos[:, :-1].contiguous(),
        document_ids=full_doc[:, :-1].contiguous(),
    )


def packed_attention_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` document ids -> ``[b, 1, s, s]`` bool, True = masked out (megatron convention).

    Query t may attend to key u only if u <= t and both are in the same document. Padding
    tokens form one document of their own, so no query row is fully masked (no NaN softmax).
    """
    if document_ids.dim() != 2:
        raise ValueError(f"document_ids must be [b, s], got shape {tuple(document_ids.shape)}")
    s = document_ids.shape[1]
    same_document = document_ids[:, :, None] == document_ids[:, None, :]
    causal = torch.ones((s, s), dtype=torch.bool, device=document_ids.device).tril()
    return ~(same_document & causal).unsqueeze(1)


def cu_seqlens_from_document_ids(document_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative segment lengths over the flattened ``[b, s]`` batch (THD layout), int32.

    A segment is a run of equal document ids within a row; a row's padding is one segment.
    Returns ``(cu_seqlens [num_segments + 1], max_seqlen)``.
    """
    if document_ids.dim() != 2:
        raise ValueError(f"document_ids must be [b, s], got shape {tuple(document_ids.shape)}")
    b, s = document_ids.shape
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    begin = torch.nonzero(starts.reshape(-1)).squeeze(1)
    cu = torch.cat([begin, torch.tensor([b * s], device=begin.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max().item())
