"""The language model fine-tuned with LoRA adapters (peft), jointly with the multi-task loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polyrec.config import TextSpec
from polyrec.text.encoder import offline, resolve_model


def tokenize(spec: TextSpec, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [n, L] for every catalog text, computed once."""
    offline()
    from transformers import AutoTokenizer
    batch = AutoTokenizer.from_pretrained(resolve_model(spec.model))(
        texts, padding=True, truncation=True, max_length=spec.max_length, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


class LoraItemEncoder(nn.Module):
    """Item index [B] → whitened, mean-pooled sentence embedding [B, k] from a LoRA-tuned encoder.

    Training encodes only the distinct items of each batch. In eval mode the whole catalog is
    encoded once and reused until its weights change (training resumes, or weights are loaded):
    switching to eval mode again, as every scoring call does, costs nothing. Only the adapter weights
    train; :meth:`frozen_keys` names the base model's, which bundles leave out (they are
    reloaded from ``spec.model``).
    """

    def __init__(self, spec: TextSpec, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 whiten_mean: torch.Tensor, whiten_projection: torch.Tensor, batch_size: int = 256):
        super().__init__()
        offline()
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel
        base = AutoModel.from_pretrained(resolve_model(spec.model))
        self.lm = get_peft_model(base, LoraConfig(r=spec.lora_rank, lora_alpha=2 * spec.lora_rank,
                                                  lora_dropout=0.0))
        self.register_buffer("input_ids", input_ids)
        self.register_buffer("attention_mask", attention_mask)
        self.register_buffer("whiten_mean", whiten_mean)
        self.register_buffer("whiten_projection", whiten_projection)
        self.batch_size = batch_size
        self._catalog: torch.Tensor | None = None   # the catalog's encoding with the current weights
        self.register_load_state_dict_post_hook(lambda module, keys: module._weights_changed())

    @classmethod
    def for_catalog(cls, spec: TextSpec, texts: list[str], whitening) -> LoraItemEncoder:
        """An encoder over the catalog's rendered ``texts``, with the catalog's text whitening."""
        return cls(spec, *tokenize(spec, texts), torch.from_numpy(whitening.mean), torch.from_numpy(whitening.projection))

    @classmethod
    def from_state(cls, spec: TextSpec, state: dict[str, torch.Tensor], prefix: str = "item_encoder.") -> LoraItemEncoder:
        """A saved encoder's tokens and whitening (its adapters load with the model's weights)."""
        return cls(spec, *(state[prefix + key] for key in ("input_ids", "attention_mask", "whiten_mean",
                                                           "whiten_projection")))

    def frozen_keys(self, prefix: str) -> set[str]:
        return {prefix + name for name, p in self.named_parameters() if not p.requires_grad}

    def append(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Tokens of new catalog items (cold start)."""
        width = max(self.input_ids.shape[1], input_ids.shape[1])
        pad = lambda t: F.pad(t, (0, width - t.shape[1]))  # noqa: E731
        self.input_ids = torch.cat([pad(self.input_ids), pad(input_ids)])
        self.attention_mask = torch.cat([pad(self.attention_mask), pad(attention_mask)])
        if self._catalog is not None:   # the new items only, with the same weights
            with torch.no_grad():
                self._catalog = torch.cat([self._catalog, self._encode(torch.arange(len(self._catalog),
                                                                                    len(self.input_ids)))])

    def train(self, mode: bool = True):
        # evaluation reads the whole catalog's encoding, made here (once per set of weights)
        super().train(mode)
        if mode:
            self._catalog = None
        elif self._catalog is None:
            self._catalog = self._encode_catalog()
        return self

    def _weights_changed(self) -> None:
        self._catalog = None if self.training else self._encode_catalog()

    @torch.no_grad()
    def _encode_catalog(self) -> torch.Tensor:
        n = len(self.input_ids)
        return torch.cat([self._encode(torch.arange(a, min(a + self.batch_size, n))) for a in range(0, n, self.batch_size)])

    def _encode(self, items: torch.Tensor) -> torch.Tensor:
        mask = self.attention_mask[items]
        width = int(mask.sum(1).max())
        hidden = self.lm(input_ids=self.input_ids[items, :width], attention_mask=mask[:, :width]).last_hidden_state
        mask = mask[:, :width, None].to(hidden.dtype)
        pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)
        return (pooled - self.whiten_mean) @ self.whiten_projection

    def forward(self, item: torch.Tensor) -> torch.Tensor:
        if self.training:
            unique, inverse = torch.unique(item, return_inverse=True)
            return self._encode(unique)[inverse]
        return self._catalog[item]
