"""The Perceiver resampler of AKI: a fixed number of learned latents read each image's patch features.

Each layer lets the latents attend to ``concat(media, latents)`` and then applies a feed-forward; a final
LayerNorm and a projection to the language model's width follow. The parameter names mirror the released
checkpoint (``norm_media``, ``norm_latents``, ``to_q``, ``to_kv``, ``to_out``; see ``convert.py``).
"""

from __future__ import annotations

import torch
from torch import nn


class PerceiverAttention(nn.Module):
    """Latents (queries) attend to the image features and to themselves (keys and values)."""

    def __init__(self, *, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media, latents = self.norm_media(media), self.norm_latents(latents)  # (N, P, D), (N, Q, D)
        keys_values = torch.cat([media, latents], dim=1)  # (N, P + Q, D)
        q = self._split_heads(self.to_q(latents))  # (N, H, Q, Dh)
        k, v = (self._split_heads(t) for t in self.to_kv(keys_values).chunk(2, dim=-1))  # (N, H, P + Q, Dh)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # (N, H, Q, Dh)
        return self.to_out(out.transpose(1, 2).flatten(2))  # (N, Q, D)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)


class FeedForward(nn.Module):
    """Pre-norm MLP without biases: LayerNorm, Linear up, GELU, Linear down."""

    def __init__(self, *, dim: int, mult: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, dim * mult, bias=False)
        self.act = nn.GELU()
        self.down = nn.Linear(dim * mult, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(self.norm(x))))


class ResamplerLayer(nn.Module):
    """One residual attention block and one residual feed-forward block over the latents."""

    def __init__(self, *, dim: int, heads: int, head_dim: int, ff_mult: int) -> None:
        super().__init__()
        self.attn = PerceiverAttention(dim=dim, heads=heads, head_dim=head_dim)
        self.ff = FeedForward(dim=dim, mult=ff_mult)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attn(media, latents)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """Image features ``(N, P, D)`` -> ``num_latents`` tokens per image in the text width ``(N, Q, D_text)``.

    Example:
        >>> resampler = PerceiverResampler(dim=16, out_dim=8, depth=1, heads=2, head_dim=4, ff_mult=2, num_latents=3)
        >>> resampler(torch.randn(2, 5, 16)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(
        self, *, dim: int, out_dim: int, depth: int, heads: int, head_dim: int, ff_mult: int, num_latents: int
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            ResamplerLayer(dim=dim, heads=heads, head_dim=head_dim, ff_mult=ff_mult) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.projection = nn.Linear(dim, out_dim)

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(media.shape[0], -1, -1)  # (N, Q, D)
        for layer in self.layers:
            latents = layer(media, latents)
        return self.projection(self.norm(latents))  # (N, Q, D_text)
