"""SALAD aggregation: optimal-transport assignment of patch features to clusters.

Izquierdo & Civera, "Optimal Transport Aggregation for Visual Place Recognition", CVPR 2024.
Module names (``token_features``, ``cluster_features``, ``score``, ``dust_bin``) follow the
released checkpoints so that their flat state dict loads unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def log_sinkhorn(scores: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, num_iters: int) -> torch.Tensor:
    """Entropic optimal transport in the log domain (regularisation 1).

    ``scores`` is ``[B, R, C]``; ``log_a`` ``[B, R]`` and ``log_b`` ``[B, C]`` are the log row and
    column marginals. Rows are balanced first, then columns, so after any number of iterations
    the column sums of ``exp(result)`` match ``exp(log_b)`` exactly. Returns the log plan.
    """
    u = torch.zeros_like(log_a)
    v = torch.zeros_like(log_b)
    for _ in range(num_iters):
        u = log_a - torch.logsumexp(scores + v.unsqueeze(1), dim=2)
        v = log_b - torch.logsumexp(scores + u.unsqueeze(2), dim=1)
    return scores + u.unsqueeze(2) + v.unsqueeze(1)


def assignment_log_probs(scores: torch.Tensor, dust_bin: torch.Tensor, num_iters: int = 3) -> torch.Tensor:
    """Feature-to-cluster log weights ``[B, m+1, n]`` (last row: dustbin) from scores ``[B, m, n]``.

    Marginals: every one of the n features carries mass 1/(n+m); every one of the m clusters
    receives 1/(n+m) and the dustbin the remaining (n-m)/(n+m). The plan is rescaled by (n+m), so
    each feature's weights over clusters and dustbin sum to one.
    """
    b, m, n = scores.shape
    if n <= m:
        raise ValueError(
            f"SALAD needs more patches than clusters (n > m), got n={n} patches for m={m} clusters: "
            "use a larger input image"
        )
    dust = dust_bin.to(scores.dtype).reshape(1, 1, 1).expand(b, 1, n)
    aug = torch.cat([scores, dust], dim=1)
    log_norm = -math.log(n + m)
    opts = {"dtype": scores.dtype, "device": scores.device}
    # Built with cat rather than in-place writes so that the exported ONNX graph stays simple.
    log_a = torch.cat([torch.full((b, m), log_norm, **opts), torch.full((b, 1), log_norm + math.log(n - m), **opts)], dim=1)
    log_b = torch.full((b, n), log_norm, **opts)
    return log_sinkhorn(aug, log_a, log_b, num_iters) - log_norm


class SALAD(nn.Module):
    """Sinkhorn Algorithm for Locally Aggregated Descriptors.

    Args:
        num_channels: backbone feature width D.
        num_clusters: m, the number of clusters.
        cluster_dim: l, the reduced local feature width.
        token_dim: g, the global (class token) feature width.
        dropout: dropout after the first layer of the score and feature MLPs.
        sinkhorn_iters: Sinkhorn iterations (3 in the paper).
    """

    def __init__(
        self,
        num_channels: int = 768,
        num_clusters: int = 64,
        cluster_dim: int = 128,
        token_dim: int = 256,
        dropout: float = 0.3,
        sinkhorn_iters: int = 3,
        hidden_dim: int = 512,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.num_clusters = num_clusters
        self.cluster_dim = cluster_dim
        self.token_dim = token_dim
        self.sinkhorn_iters = sinkhorn_iters
        self.token_features = nn.Sequential(
            nn.Linear(num_channels, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, token_dim)
        )
        self.cluster_features = nn.Sequential(
            nn.Conv2d(num_channels, hidden_dim, 1), nn.Dropout(dropout), nn.ReLU(), nn.Conv2d(hidden_dim, cluster_dim, 1)
        )
        self.score = nn.Sequential(
            nn.Conv2d(num_channels, hidden_dim, 1), nn.Dropout(dropout), nn.ReLU(), nn.Conv2d(hidden_dim, num_clusters, 1)
        )
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    @property
    def output_dim(self) -> int:
        return self.num_clusters * self.cluster_dim + self.token_dim

    def assignments(self, features: torch.Tensor) -> torch.Tensor:
        """Dustbin-free assignment weights ``[B, m, n]`` for a feature map ``[B, D, rows, cols]``."""
        scores = self.score(features).flatten(2)
        return assignment_log_probs(scores, self.dust_bin, self.sinkhorn_iters)[:, :-1].exp()

    def forward(self, cls_token: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Global descriptor ``[B, g + m*l]``: [token, clusters (feature dim outer, cluster inner)]."""
        local = self.cluster_features(features).flatten(2)  # [B, l, n]
        weights = self.assignments(features)  # [B, m, n]
        clusters = torch.einsum("bln,bmn->blm", local, weights)
        clusters = F.normalize(clusters, p=2, dim=1)  # each cluster vector to unit length
        token = F.normalize(self.token_features(cls_token), p=2, dim=-1)
        return F.normalize(torch.cat([token, clusters.flatten(1)], dim=-1), p=2, dim=-1)
