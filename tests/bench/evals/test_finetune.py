"""Fine-tuning with layer-wise lr decay (sop_plugin.bench.evals.finetune)."""

from __future__ import annotations

import pytest
import torch

from sop_plugin.bench.evals.finetune import Classifier, FinetuneSettings, finetune_top1, layer_decay_groups
from sop_plugin.bench.train.encoder import MaskedEncoder, build_vit


def _encoder(depth: int = 2) -> MaskedEncoder:
    torch.manual_seed(0)
    return MaskedEncoder(build_vit(28, 7, 32, depth, 2, in_chans=1))


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c: a bright horizontal bar at height c on a dark noisy 28x28 image.

    Mirroring keeps the class.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 40, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, 0, 2 + 6 * c : 7 + 6 * c, 4:24] = 230
    return images, labels


def test_layer_decay_groups_scale_by_depth() -> None:
    model = Classifier(_encoder(depth=3), 5)
    for p in model.encoder.masked_vit.vit.parameters():
        p.requires_grad_(True)
    groups = layer_decay_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    vit = model.encoder.masked_vit.vit
    # 3 blocks (BEiT convention): embeddings layer 0 at 0.5^4, block i at 0.5^(3 - i), norm and head at 1.
    assert by_param[id(vit.patch_embed.proj.weight)]["lr"] == pytest.approx(0.5**4)
    assert by_param[id(vit.cls_token)]["lr"] == pytest.approx(0.5**4)
    assert by_param[id(vit.blocks[0].attn.qkv.weight)]["lr"] == pytest.approx(0.5**3)
    assert by_param[id(vit.blocks[2].mlp.fc1.weight)]["lr"] == pytest.approx(0.5)
    assert by_param[id(vit.norm.weight)]["lr"] == pytest.approx(1.0)
    assert (
        by_param[id(model.head.weight)]["lr"] == 1.0
        and by_param[id(model.head.weight)]["weight_decay"] == 0.05
    )
    assert by_param[id(vit.blocks[0].norm1.weight)]["weight_decay"] == 0.0  # 1-D: no decay
    assert len(by_param) == len(list(vit.parameters())) + 2  # every ViT parameter and the head, nothing else


def test_finetune_learns_and_leaves_the_encoder_untouched() -> None:
    enc = _encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    train_x, train_y = _blobs(256, 0)
    test_x, test_y = _blobs(64, 1)
    settings = FinetuneSettings(train_images=None, epochs=3, batch_size=32, lr=2e-3, crop_scale=(0.8, 1.0))
    acc = finetune_top1(enc, train_x, train_y, test_x, test_y, (0.2,), (0.3,), 28, settings, seed=0)
    assert acc >= 90.0
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    again = finetune_top1(enc, train_x, train_y, test_x, test_y, (0.2,), (0.3,), 28, settings, seed=0)
    assert again == acc  # seeded: same crops, flips and batch order


def test_finetune_settings_validation() -> None:
    s = FinetuneSettings.from_mapping({"train_images": None, "epochs": 1, "crop_scale": [0.3, 1.0]})
    assert s.train_images is None and s.crop_scale == (0.3, 1.0)
    assert FinetuneSettings.from_mapping({"train_images": "500"}).train_images == 500
    with pytest.raises(ValueError, match="layer_decay"):
        FinetuneSettings(layer_decay=1.5)
