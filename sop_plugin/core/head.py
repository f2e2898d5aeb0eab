"""Projection head shared by the [CLS] and patch tokens (no prototype layer)."""

from __future__ import annotations

from torch import Tensor, nn


class SOPHead(nn.Module):
    """MLP (GELU, no BN) to a bottleneck, L2-normalised: [..., in_dim] -> [..., bottleneck_dim]; SOP
    scores embeddings against memory rows directly, so unlike DINO/iBOT it has no prototype layer."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, num_layers: int = 3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(self.mlp(x), dim=-1)


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
