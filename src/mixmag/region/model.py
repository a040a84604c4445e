"""The region-level mixing encoder: a small pre-LN transformer over a region's multi-magnification tiles.

Input is one row of FM tile embeddings per token of the region layout (21 for 5x/10x/20x: the 5x tile,
its 4 10x children and 16 20x grandchildren, see :class:`mixmag.geometry.RegionSpec`) plus a
validity mask. Each token is normalised and projected to the model width, tagged with a learned
magnification embedding and a position embedding (learned per slot, or a fixed 2D sin-cos code of the
tile centre inside the region so that any layout works), a CLS token is prepended, and a pre-LN
transformer mixes everything. Invalid tokens (background tiles) are key-padding-masked: nothing
attends to them, so they cannot leak into the CLS or valid tokens. The CLS token is always a valid
key, which keeps a region whose tokens are all invalid finite (the CLS then attends only to itself).

The masked-embedding-modeling placeholder (a learned mask token replacing the projected input, after
which magnification and position embeddings are still added) lives here too, because it is part of
the encoder's input stage; the decoder and losses live in :mod:`mixmag.region.objectives`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixmag.errors import MixmagValueError
from mixmag.geometry import RegionSpec
from mixmag.registry import Registry

logger = logging.getLogger(__name__)

POSITIONS = ("slot", "sincos")


def sincos_position_embedding(centres: Tensor, width: int, *, max_log2_freq: float = 8.0) -> Tensor:
    """Fixed 2D sin-cos code of token centres.

    Args:
        centres: (T, 2) tile centres (x, y) as fractions of the region side, in [0, 1].
        width: Embedding width W (multiple of 4): W/2 channels encode x, W/2 encode y.
        max_log2_freq: Highest frequency is ``2**max_log2_freq`` half-cycles per region side; 8
            resolves tiles far smaller than a 20x tile (1/16 of the region side).

    Returns:
        (T, W) float32 embedding.
    """
    if width % 4:
        raise MixmagValueError(f"position='sincos' needs a width divisible by 4, got {width}")
    n_freq = width // 4
    freqs = math.pi * torch.pow(2.0, torch.linspace(0.0, max_log2_freq, n_freq))  # (W/4,)
    parts = []
    for axis in range(2):
        angles = centres[:, axis : axis + 1].float() * freqs[None, :]  # (T, W/4)
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1)


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a random subset of samples (training only)."""

    def __init__(self, *, prob: float = 0.0) -> None:
        super().__init__()
        self.prob = float(prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention with a boolean key mask (True = may be attended to)."""

    def __init__(self, *, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise MixmagValueError(f"width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """x (B, S, W), key_mask (B, S) bool -> (B, S, W)."""
        b, s, w = x.shape
        qkv = self.qkv(x).reshape(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, S, W/heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, s, w))


class Block(nn.Module):
    """Pre-LN transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, *, width: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(round(width * mlp_ratio))
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width=width, heads=heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop_path = DropPath(prob=drop_path)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), key_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class RegionEncoder(nn.Module):
    """Mixed-magnification region encoder (docs/concepts/region-encoder.md#architecture-regionencoder).

    Args:
        tile_dim: FM tile embedding dimension D_tile (2560 for Virchow2 CLS+mean).
        n_tokens: Tokens per region T (21 for the default 5x/10x/20x layout).
        n_mags: Number of magnifications in the layout.
        token_mag_index: (T,) magnification index of every token (coarsest = 0).
        token_centres: (T, 2) tile centres (x, y) in region-side units; required for ``position="sincos"``.
        width: Model width W.
        depth: Number of transformer blocks.
        heads: Attention heads.
        mlp_ratio: MLP hidden size as a multiple of W.
        drop_path: Stochastic-depth rate of the last block (linearly increasing from 0 over depth).
        position: ``"slot"`` (learned embedding per token slot) or ``"sincos"`` (fixed 2D code of the
            tile centre; works for any layout and transfers between layouts).
    """

    token_mag_index: Tensor  # (T,) buffer
    pos_embed: Tensor  # (T, W) parameter ("slot") or fixed buffer ("sincos")
    input_mean: Tensor  # (D_tile,) persistent buffer: cohort mean of the tile embeddings
    input_std: Tensor  # (D_tile,) persistent buffer: cohort standard deviation

    def __init__(
        self,
        *,
        tile_dim: int,
        n_tokens: int,
        n_mags: int,
        token_mag_index: Sequence[int],
        token_centres: Sequence[Sequence[float]] | None = None,
        width: int = 768,
        depth: int = 6,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        position: str = "slot",
    ) -> None:
        super().__init__()
        mag_index = torch.as_tensor(list(token_mag_index), dtype=torch.long)
        if mag_index.shape != (n_tokens,):
            raise ValueError(f"token_mag_index must have {n_tokens} entries, got {tuple(mag_index.shape)}")
        if int(mag_index.min()) < 0 or int(mag_index.max()) >= n_mags:
            raise ValueError(f"token_mag_index values must lie in [0, {n_mags - 1}]")
        if position not in POSITIONS:
            raise MixmagValueError(f"unknown position {position!r}; use one of {POSITIONS}")
        centres = None if token_centres is None else [[float(c) for c in xy] for xy in token_centres]
        if position == "sincos" and centres is None:
            raise ValueError("position='sincos' needs token_centres (T, 2); use RegionSpec.layout().centres_unit()")
        # JSON-serialisable constructor arguments: stored in checkpoints to rebuild the model.
        self.init_kwargs: dict[str, Any] = {
            "tile_dim": int(tile_dim), "n_tokens": int(n_tokens), "n_mags": int(n_mags),
            "token_mag_index": mag_index.tolist(), "token_centres": centres, "width": int(width),
            "depth": int(depth), "heads": int(heads), "mlp_ratio": float(mlp_ratio),
            "drop_path": float(drop_path), "position": position,
        }
        self.tile_dim = int(tile_dim)
        self.n_tokens = int(n_tokens)
        self.width = int(width)
        self.position = position

        # Per-dimension cohort standardisation (identity until set_input_stats): FM embeddings
        # have a few dimensions with a variance orders of magnitude above the rest, which a
        # per-token LayerNorm does not equalise; they would dominate the projection otherwise.
        self.register_buffer("input_mean", torch.zeros(tile_dim))
        self.register_buffer("input_std", torch.ones(tile_dim))
        self.input_norm = nn.LayerNorm(tile_dim)
        self.proj = nn.Linear(tile_dim, width)
        self.mag_embed = nn.Parameter(torch.zeros(n_mags, width))
        # derived from constructor args, so not part of the state dict
        self.register_buffer("token_mag_index", mag_index, persistent=False)
        if position == "slot":
            self.pos_embed = nn.Parameter(torch.zeros(n_tokens, width))
        else:
            code = sincos_position_embedding(torch.tensor(centres), width)
            self.register_buffer("pos_embed", code, persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        rates = torch.linspace(0.0, drop_path, depth).tolist() if depth > 1 else [drop_path]
        self.blocks = nn.ModuleList(
            Block(width=width, heads=heads, mlp_ratio=mlp_ratio, drop_path=r) for r in rates
        )
        self.norm = nn.LayerNorm(width)
        self._init_weights()

    def _init_weights(self) -> None:
        # ViT/MAE conventions: truncated normal(0.02) for linear layers and learned embeddings.
        for p in (self.mag_embed, self.cls_token, self.mask_token):
            nn.init.trunc_normal_(p, std=0.02)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def set_input_stats(self, mean: Tensor | np.ndarray | Sequence[float], std: Tensor | np.ndarray | Sequence[float]) -> None:
        """Standardise inputs per dimension with cohort statistics ((D_tile,) each, std > 0).

        Pretraining sets them from its corpus (the same statistics that standardise the MEM
        targets); they are saved with the weights, so fine-tuning and ``encode`` apply them too.
        """
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.shape != (self.tile_dim,) or std_t.shape != (self.tile_dim,):
            raise ValueError(f"input statistics must have shape ({self.tile_dim},), got "
                             f"{tuple(mean_t.shape)} and {tuple(std_t.shape)}")
        if not bool(torch.isfinite(mean_t).all() and torch.isfinite(std_t).all() and (std_t > 0).all()):
            raise ValueError("input statistics must be finite with std > 0")
        self.input_mean.copy_(mean_t)
        self.input_std.copy_(std_t)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # State dicts saved before input standardisation existed hold no statistics: those encoders
        # were trained on raw embeddings, so the identity (the buffers' value at construction) is
        # the faithful default. Region checkpoints are upgraded explicitly before they get here
        # (mixmag.region.checkpoints.upgrade_checkpoint_tensors); this covers state dicts that
        # embed an encoder, such as MIL fold models (`model.pt`, mil_model v1) of that time.
        absent = [name for name in ("input_mean", "input_std") if prefix + name not in state_dict]
        if absent and prefix + "proj.weight" in state_dict:  # a whole encoder, not a partial load
            logger.warning("region-encoder weights without input statistics %s (saved before input "
                           "standardisation existed): keeping the encoder's own (the identity when "
                           "newly built)", absent)
        for name, fill in (("input_mean", self.input_mean), ("input_std", self.input_std)):
            state_dict.setdefault(prefix + name, fill.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (embeddings and special tokens)."""
        return {"mag_embed", "pos_embed", "cls_token", "mask_token"}

    def _check_inputs(self, x: Tensor, valid: Tensor) -> None:
        if x.ndim != 3 or x.shape[1:] != (self.n_tokens, self.tile_dim):
            raise MixmagValueError(
                f"expected tile features of shape (B, {self.n_tokens}, {self.tile_dim}), got "
                f"{tuple(x.shape)}; the encoder was built for another region layout or tile encoder"
            )
        if valid.shape != x.shape[:2]:
            raise ValueError(f"valid must have shape {tuple(x.shape[:2])}, got {tuple(valid.shape)}")

    def embed_tokens(self, x: Tensor, valid: Tensor, mask: Tensor | None = None) -> Tensor:
        """Input stage: (B, T, D_tile) -> (B, T, W) token embeddings (before the CLS is prepended).

        Inputs are standardised with the cohort statistics (:meth:`set_input_stats`); invalid
        inputs are then zeroed (their rows may hold anything, even non-finite filler) and masked
        tokens are replaced by the learned mask token *after* projection, so the encoder still
        knows where (position) and at which magnification the hidden tile was.
        """
        x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        x = torch.where(valid[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        h = self.proj(self.input_norm(x))
        if mask is not None:
            h = torch.where(mask[..., None], self.mask_token.to(h.dtype), h)
        return h + self.mag_embed[self.token_mag_index] + self.pos_embed

    def forward_encoder(self, x: Tensor, valid: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode (optionally masked) regions.

        Args:
            x: (B, T, D_tile) tile embeddings.
            valid: (B, T) bool; False tokens are key-padding-masked (ignored by every query).
            mask: (B, T) bool tokens whose input is replaced by the mask token (MEM); they remain
                attendable keys. None = no masking.

        Returns:
            ``(cls (B, W), tokens (B, T, W))`` after the final LayerNorm.
        """
        self._check_inputs(x, valid)
        valid = valid.bool()
        h = self.embed_tokens(x, valid, None if mask is None else mask.bool() & valid)
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1)
        key_mask = torch.cat([valid.new_ones(valid.shape[0], 1), valid], dim=1)
        for block in self.blocks:
            h = block(h, key_mask)
        h = self.norm(h)
        return h[:, 0], h[:, 1:]

    def forward_features(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D_tile), valid (B, T) bool -> ``(cls (B, W), tokens (B, T, W))`` without masking."""
        return self.forward_encoder(x, valid, None)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """x (B, T, D_tile), valid (B, T) bool -> CLS embedding (B, W)."""
        return self.forward_features(x, valid)[0]


@dataclass(frozen=True)
class RegionEncoderPreset:
    """Architecture hyper-parameters of a named region-encoder size."""

    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    description: str = ""


REGION_ENCODERS: Registry[RegionEncoderPreset] = Registry("region encoder preset")
REGION_ENCODERS.add("base", RegionEncoderPreset(768, 6, 12, description="the default for real use"))
REGION_ENCODERS.add("small", RegionEncoderPreset(128, 2, 4, drop_path=0.0, description="CPU demos"))
REGION_ENCODERS.add("tiny", RegionEncoderPreset(32, 2, 2, mlp_ratio=2.0, drop_path=0.0,
                                                description="unit tests"))


def build_region_encoder(*, tile_dim: int, spec: RegionSpec, preset: str = "base",
                         **overrides: Any) -> RegionEncoder:
    """Build a :class:`RegionEncoder` for ``spec``'s token layout from a named preset.

    Args:
        tile_dim: FM tile embedding dimension D_tile.
        spec: Region geometry; fixes T, the magnification of every token and the tile centres.
        preset: ``"base"`` (W 768, depth 6, heads 12), ``"small"`` (W 128, depth 2, heads 4) or
            ``"tiny"`` (W 32, depth 2, heads 2); see ``REGION_ENCODERS``.
        **overrides: Any :class:`RegionEncoder` hyper-parameter (width, depth, heads, mlp_ratio,
            drop_path, position); ``None`` values are ignored.
    """
    p = REGION_ENCODERS.get(preset)
    kwargs: dict[str, Any] = {"width": p.width, "depth": p.depth, "heads": p.heads,
                              "mlp_ratio": p.mlp_ratio, "drop_path": p.drop_path}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    layout = spec.layout()
    return RegionEncoder(
        tile_dim=tile_dim, n_tokens=spec.n_tokens, n_mags=len(spec.mpps),
        token_mag_index=layout.mag_index.tolist(), token_centres=layout.centres_unit().tolist(), **kwargs,
    )
