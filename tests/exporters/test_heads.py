"""The losses and modules of the alignment heads on hand-made tensors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.nn import functional as F  # noqa: E402

from exporters.heads import (  # noqa: E402
    CrossModalAutoencoder,
    ModalityDiscriminator,
    NeighbourBank,
    ProjectionHead,
    info_nce,
    modality_adversarial,
    reverse_gradient,
)


def _negative_gradients(beta: float) -> torch.Tensor:
    """Gradient of the loss on each of the first query's logits, from a hard and an easy negative.

    Query 0 has its own pair (cosine 0.9), a hard negative (0.8) and an easy one (-0.5); the
    other rows are orthogonal so they do not muddle the first row.
    """
    a = torch.eye(3)
    b = torch.tensor([[0.9, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.5, 0.0, 0.866]])
    b.requires_grad_(True)
    info_nce(a, b, torch.tensor(10.0), hard_negatives=beta).backward()
    return b.grad[:, 0]  # d loss / d (cosine of query 0 with each b), up to the scale


def test_plain_info_nce_is_the_symmetric_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(6, 4, generator=generator), dim=1)
    b = F.normalize(torch.randn(6, 4, generator=generator), dim=1)
    logits = 5.0 * a @ b.T
    target = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert torch.allclose(info_nce(a, b, torch.tensor(5.0)), expected)
    assert torch.allclose(info_nce(a, b, torch.tensor(5.0), hard_negatives=0.0), expected)


def test_hard_negative_weighting_weighs_harder_negatives_more() -> None:
    plain, hard = _negative_gradients(0.0), _negative_gradients(4.0)
    # Both push every negative away (positive gradient on its cosine) and pull the pair in.
    assert plain[0] < 0 and hard[0] < 0 and (plain[1:] > 0).all() and (hard[1:] > 0).all()
    # The hard negative's share of the push grows with beta; the easy one's shrinks.
    assert hard[1] / hard[2] > 3 * (plain[1] / plain[2])
    assert hard[2] < plain[2]


def test_the_reversed_gradient_has_the_opposite_sign_and_the_given_weight() -> None:
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.5, -1.0, -1.5]))


def test_the_adversarial_loss_trains_the_discriminator_and_reverses_the_heads_gradient() -> None:
    torch.manual_seed(0)
    text, image = torch.randn(64, 8) + 1.0, torch.randn(64, 8) - 1.0
    heads = torch.nn.ModuleList([ProjectionHead(8, 4), ProjectionHead(8, 4)])
    discriminator = ModalityDiscriminator(4, 2, hidden=16)

    def loss(weight: float) -> torch.Tensor:
        return modality_adversarial([heads[0](text), heads[1](image)], discriminator, weight)

    def gradients(weight: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        heads.zero_grad()
        discriminator.zero_grad()
        loss(weight).backward()
        return [p.grad.clone() for p in heads.parameters()], [p.grad.clone() for p in discriminator.parameters()]

    heads_reversed, disc_reversed = gradients(0.5)
    heads_plain, disc_plain = gradients(-1.0)  # a weight of -1 is no reversal at all
    assert all(torch.allclose(r, -0.5 * p) for r, p in zip(heads_reversed, heads_plain))
    assert all(torch.equal(r, p) for r, p in zip(disc_reversed, disc_plain))
    # A descent step on the reversed gradient makes the heads harder to tell apart.
    before = loss(1.0).item()
    with torch.no_grad():
        for param, grad in zip(heads.parameters(), heads_reversed):
            param -= 0.05 * grad
    assert loss(1.0).item() > before


def test_cross_modal_code_is_the_mean_of_the_shown_modalities() -> None:
    torch.manual_seed(0)
    ae = CrossModalAutoencoder({"text": 6, "image": 10}, hidden=8, bottleneck=4)
    text, image = torch.randn(3, 6), torch.randn(3, 10)
    both = ae.encode([text, image], torch.ones(3, 2))
    text_only = ae.encode([text, image], torch.tensor([[1.0, 0.0]] * 3))
    image_only = ae.encode([text, image], torch.tensor([[0.0, 1.0]] * 3))
    assert torch.allclose(text_only, ae.encoders["text"](text))
    assert torch.allclose(both, 0.5 * (text_only + image_only), atol=1e-6)
    assert [r.shape for r in ae.decode(both)] == [(3, 6), (3, 10)]


def test_a_neighbour_bank_lends_the_values_of_the_nearest_keys() -> None:
    keys = torch.eye(4)
    values = F.normalize(torch.tensor([[0.0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]]), dim=1)
    z = F.normalize(torch.tensor([[1.0, 0.2, 0.0, 0.0]]), dim=1)
    # One neighbour: key 0 is nearest, so z borrows value 0 at the bank's weight.
    one = NeighbourBank(keys, values, neighbours=1, scale=20.0, weight=0.5)(z)
    assert torch.allclose(one, F.normalize(z + 0.5 * values[:1], dim=1), atol=1e-6)
    # Two neighbours: keys 0 and 1, weighted by softmax(scale * similarity): key 0 dominates.
    two = NeighbourBank(keys, values, neighbours=2, scale=20.0, weight=0.5)(z)
    weights = torch.softmax(20.0 * torch.tensor([z[0, 0], z[0, 1]]), dim=0)
    borrowed = F.normalize(weights[0] * values[0] + weights[1] * values[1], dim=0)
    assert torch.allclose(two, F.normalize(z + 0.5 * borrowed, dim=1), atol=1e-3)
    assert float(two[0, 3]) > float(two[0, 2]) > 0  # value 0's axis more than value 1's
    assert NeighbourBank(keys, values, neighbours=9, scale=1.0, weight=0.5).neighbours == 4
    with pytest.raises(ValueError, match="as many values as keys"):
        NeighbourBank(keys, values[:2], neighbours=2, scale=1.0, weight=0.5)
