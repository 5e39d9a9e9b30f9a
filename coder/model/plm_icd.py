"""PLM-ICD (Huang et al. 2022): a pretrained encoder per chunk and label-wise attention over the note.

Each chunk of a note is encoded separately; the token states of all chunks are joined into one
sequence and a label-wise attention head (LAAT, Vu et al. 2020) gives one vector, then one
logit, per label. Unlike the original code, padding tokens and padding chunks are masked in
the attention, so a note scores the same alone and in a padded batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from coder.model.folder import CONFIG_FILE, TORCH_DIR, WEIGHTS_FILE, ModelConfig, verify_folder
from coder.model.chunking import Batch, ChunkedNote, score_in_batches
from coder.errors import ModelBundleError

DEFAULT_ATTENTION_DIM = 256
# Added to masked attention scores: exp() of it is 0, and it stays finite in fp16 (max 65504).
MASKED = -3.0e4


class LabelAttention(nn.Module):
    """LAAT: Z = tanh(W H), A = softmax_tokens(U Z), logits = sum_tokens(A * (H O^T)) + b.

    The same as V = A H, logits = (V * O).sum(-1) + b, reordered so that both products have a
    weight matrix on the right (int8 quantisation then covers them) and no [labels, hidden]
    vector is ever built per note.
    """

    def __init__(self, *, hidden_size: int, attention_dim: int, n_labels: int):
        super().__init__()
        self.project = nn.Linear(hidden_size, attention_dim, bias=False)  # W
        self.label_queries = nn.Linear(attention_dim, n_labels, bias=False)  # U
        self.label_weights = nn.Parameter(torch.empty(n_labels, hidden_size))  # O
        self.label_bias = nn.Parameter(torch.zeros(n_labels))  # b
        for weight in (self.project.weight, self.label_queries.weight, self.label_weights):
            nn.init.normal_(weight, mean=0.0, std=0.03)  # as in PLM-ICD

    def forward(self, hidden: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: [batch, tokens, hidden]; token_mask: [batch, tokens] bool (True = real token).

        Returns logits [batch, n_labels] and the attention peak [batch, n_labels] (token index).
        """
        scores = self.label_queries(torch.tanh(self.project(hidden)))  # [batch, tokens, n_labels]
        scores = scores + _additive_mask(token_mask.unsqueeze(-1), scores.dtype)
        values = hidden @ self.label_weights.T  # [batch, tokens, n_labels]
        # softmax over tokens written out: the token axis stays in the middle (no transpose of a
        # [tokens, labels] tensor) and masked tokens get a weight of exactly 0
        weights = torch.exp(scores - scores.amax(dim=1, keepdim=True))
        logits = (weights * values).sum(dim=1) / weights.sum(dim=1) + self.label_bias
        return logits, scores.argmax(dim=1)


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``mask`` is true, MASKED elsewhere: added to attention scores before a softmax."""
    return (1.0 - mask.to(dtype)) * MASKED


class PlmIcd(nn.Module):
    """Encoder over chunks + masked label-wise attention; outputs one logit per label."""

    def __init__(self, *, encoder: PreTrainedModel, n_labels: int, attention_dim: int = DEFAULT_ATTENTION_DIM):
        super().__init__()
        self.encoder = encoder
        self.head = LabelAttention(
            hidden_size=encoder.config.hidden_size, attention_dim=attention_dim, n_labels=n_labels
        )

    @property
    def n_labels(self) -> int:
        return int(self.head.label_bias.shape[0])

    @property
    def attention_dim(self) -> int:
        return int(self.head.project.weight.shape[0])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask: [batch, n_chunks, chunk_len] (a padding chunk has an all-zero mask).

        Returns logits [batch, n_labels] and the attention peak [batch, n_labels], an index into
        the joined tokens (``chunk * chunk_len + position``).
        """
        batch, n_chunks, chunk_len = input_ids.shape
        # A padding chunk gets its first position unmasked so the encoder never sees an all-masked
        # row (which can turn into NaN); the head masks those states out anyway.
        encoder_mask = torch.cat([torch.ones_like(attention_mask[..., :1]), attention_mask[..., 1:]], dim=-1)
        # A 4D additive mask [chunks, 1, 1, chunk_len] is used as given by the encoder: exported,
        # it is one broadcast Add per layer instead of a boolean mask expanded to every head.
        states = self.encoder(
            input_ids=input_ids.reshape(batch * n_chunks, chunk_len),
            attention_mask=_additive_mask(encoder_mask.reshape(batch * n_chunks, 1, 1, chunk_len), self.encoder.dtype),
        ).last_hidden_state  # [batch * n_chunks, chunk_len, hidden]
        joined = states.reshape(batch, n_chunks * chunk_len, -1)  # [batch, n_chunks * chunk_len, hidden]
        token_mask = attention_mask.reshape(batch, n_chunks * chunk_len).bool()
        return self.head(joined, token_mask)


def torch_forward(model: PlmIcd) -> Callable[[Batch], tuple[np.ndarray, np.ndarray]]:
    """Batch -> (logits, peaks) as numpy, for ``chunking.score_in_batches``."""
    model.eval()

    @torch.inference_mode()
    def forward(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        logits, peaks = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
        return logits.numpy(), peaks.numpy()

    return forward


def predict_proba(model: PlmIcd, notes: Sequence[ChunkedNote], *, batch_size: int, pad_id: int) -> np.ndarray:
    """Sigmoid scores [n_notes, n_labels] in torch (eager); unprocessable notes get zeros."""
    scores, _ = score_in_batches(torch_forward(model), notes, n_labels=model.n_labels, batch_size=batch_size, pad_id=pad_id)
    return scores


def save_torch(folder: Path, *, model: PlmIcd, tokenizer: PreTrainedTokenizerBase) -> None:
    """Save encoder config, tokenizer and weights into a model folder (fp16 to halve the size; upcast on load)."""
    target = folder / TORCH_DIR
    target.mkdir(parents=True, exist_ok=True)
    model.encoder.config.save_pretrained(target)
    tokenizer.save_pretrained(target)
    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))


def load_torch(folder: Path, config: ModelConfig) -> PlmIcd:
    """The torch model of a model folder, in fp32 and eval mode, after checking the weights' hash."""
    verify_folder(folder, config, needed=[WEIGHTS_FILE])
    weights = folder / WEIGHTS_FILE
    encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(folder / TORCH_DIR)))
    model = PlmIcd(encoder=encoder, n_labels=len(config.labels), attention_dim=config.attention_dim)
    state = {name: tensor.float() for name, tensor in load_file(str(weights)).items()}
    width = state["head.label_bias"].shape[0]
    if width != len(config.labels):
        raise ModelBundleError(f"{weights} has {width} outputs, {CONFIG_FILE} lists {len(config.labels)} labels")
    model.load_state_dict(state)
    return model.eval()
