"""VLAProcessor: env pixels and instructions -> the tensors DvlaVLAModel reads.

Images arrive as uint8 [N, H*W*3] (flattened HWC); they become [N, 3, S, S] in [-1, 1]
(SigLIP's mean = std = 0.5), resized to the vision tower's S. Instructions are tokenised
byte-wise by ByT5Tokenizer (no vocabulary file) and left-padded, so the last text token,
the one the model pools, is always real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import ByT5Tokenizer

_MAX_CACHED_INSTRUCTIONS = 4096


def text_vocab() -> tuple[int, int]:
    """(embedding rows, pad token id) of the byte tokenizer."""
    tok = ByT5Tokenizer()
    return len(tok), int(tok.pad_token_id)


class VLAProcessor:
    """Turns env observations into model inputs; caches token ids per distinct instruction."""

    def __init__(self, image_shape: tuple[int, ...], image_size: int, max_instruction_tokens: int):
        if len(image_shape) != 3 or image_shape[2] != 3:
            raise ValueError(f"image_shape {tuple(image_shape)} is not (H, W, 3)")
        self.image_shape = tuple(int(d) for d in image_shape)
        self.image_size = int(image_size)
        self.max_instruction_tokens = int(max_instruction_tokens)
        self.tokenizer = ByT5Tokenizer()
        self.pad_id = int(self.tokenizer.pad_token_id)
        self._token_ids: dict[str, list[int]] = {}

    @property
    def num_pixels(self) -> int:
        """I, uint8 values per flattened image."""
        h, w, c = self.image_shape
        return h * w * c

    def pixel_values(self, images: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
        """uint8 [N, H*W*3] -> [N, 3, S, S] `dtype` in [-1, 1] on `device`."""
        h, w, _ = self.image_shape
        # Move the uint8 bytes (4x smaller than floats), view as NCHW without copying, convert once.
        x = images.to(device, non_blocking=True).view(-1, h, w, 3).permute(0, 3, 1, 2)
        x = x.to(torch.float32, memory_format=torch.contiguous_format).mul_(2.0 / 255.0).sub_(1.0)
        if (h, w) != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return x.to(dtype)

    def _ids(self, text: str) -> list[int]:
        ids = self._token_ids.get(text)
        if ids is None:
            if len(self._token_ids) >= _MAX_CACHED_INSTRUCTIONS:
                self._token_ids.clear()  # a rare flood of distinct strings: start over, stay bounded
            ids = self.tokenizer.encode(text)[: self.max_instruction_tokens]
            self._token_ids[text] = ids
        return ids

    def tokens(self, instructions: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """input_ids, attention_mask: int64 [N, L], left-padded to the longest instruction in the batch."""
        index: dict[str, int] = {}
        rows = [index.setdefault(s, len(index)) for s in instructions]
        unique = [self._ids(s) for s in index]
        length = max((len(ids) for ids in unique), default=1)
        ids_u = torch.full((len(unique), length), self.pad_id, dtype=torch.long)
        mask_u = torch.zeros((len(unique), length), dtype=torch.long)
        for i, ids in enumerate(unique):
            ids_u[i, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask_u[i, length - len(ids) :] = 1
        if len(unique) == 1:  # the usual case: every row shares one instruction
            n = len(instructions)
            return ids_u.expand(n, -1).to(device), mask_u.expand(n, -1).to(device)
        sel = torch.tensor(rows, dtype=torch.long)
        return ids_u[sel].to(device), mask_u[sel].to(device)
