"""Triplet losses and online mining: hand-computed answers, a brute-force reference, and a learning run."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.facenet.samplers import PKBatchSampler
from training.facenet.triplet import MINING_METHODS, TripletLoss, pairwise_distances, triplet_loss
from utils.metrics import pair_scores, verification_metrics

# Four 1-D points: identity 0 at 0 and 1, identity 1 at 1.5 and 4. Plain distances:
# d01=1, d02=1.5, d03=4, d12=0.5, d13=3, d23=2.5. With margin 1 the eight valid triplets (a, p, n) have hinges
# (0,1,2)=0.5 (0,1,3)=0 (1,0,2)=1.5 (1,0,3)=0 (2,3,0)=2 (2,3,1)=3 (3,2,0)=0 (3,2,1)=0.5.
LINE = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
LINE_LABELS = torch.tensor([0, 0, 1, 1])


def test_pairwise_distances_plain_and_squared() -> None:
    plain = pairwise_distances(LINE, squared=False)
    expected = torch.tensor([[0, 1, 1.5, 4], [1, 0, 0.5, 3], [1.5, 0.5, 0, 2.5], [4, 3, 2.5, 0]])
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(pairwise_distances(LINE, squared=True), expected**2)


def test_batch_all_known_answer() -> None:
    loss, stats = triplet_loss(LINE, LINE_LABELS, margin=1.0, mining="batch_all", squared=False)
    assert loss.item() == pytest.approx(7.5 / 5)  # five active hinges summing to 7.5
    values = stats.as_floats()
    assert values["num_valid_triplets"] == 8
    assert values["active_fraction"] == pytest.approx(5 / 8)
    assert values["triplet_accuracy"] == pytest.approx(5 / 8)  # negatives farther than the positive
    assert values["mean_pos_dist"] == pytest.approx(1.75)
    assert values["mean_neg_dist"] == pytest.approx(2.25)


def test_semi_hard_known_answer_with_fallback() -> None:
    # (0,1): closest negative beyond d=1 is 1.5 -> 0.5.  (1,0): beyond 1 is 3 -> 0.
    # (2,3): no negative beyond 2.5 -> falls back to the farthest, 1.5 -> 2.  (3,2): beyond 2.5 is 3 -> 0.5.
    loss, stats = triplet_loss(LINE, LINE_LABELS, margin=1.0, mining="semi_hard", squared=False)
    assert loss.item() == pytest.approx((0.5 + 0 + 2 + 0.5) / 4)
    assert stats.num_mined_triplets.item() == 4
    assert stats.mined_active_fraction.item() == pytest.approx(3 / 4)


def test_batch_hard_known_answer() -> None:
    # anchors: 0 -> (1 vs 1.5) 0.5; 1 -> (1 vs 0.5) 1.5; 2 -> (2.5 vs 0.5) 3; 3 -> (2.5 vs 3) 0.5
    loss, stats = triplet_loss(LINE, LINE_LABELS, margin=1.0, mining="batch_hard", squared=False)
    assert loss.item() == pytest.approx(5.5 / 4)
    assert stats.num_mined_triplets.item() == 4


def _reference_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float, mining: str, squared: bool) -> torch.Tensor:
    """Loop-over-everything definition of each mining method, to check the vectorised one against."""
    dist = torch.cdist(emb, emb) ** 2 if squared else torch.cdist(emb, emb)
    n = len(labels)
    same = lambda i, j: bool(labels[i] == labels[j])  # noqa: E731
    if mining == "batch_all":
        hinges = [
            torch.relu(dist[a, p] - dist[a, q] + margin)
            for a, p, q in itertools.product(range(n), repeat=3)
            if a != p and same(a, p) and not same(a, q)
        ]
        return sum(hinges) / max(1, sum(int(h > 0) for h in hinges))
    losses = []
    for a in range(n):
        negatives = [dist[a, q] for q in range(n) if not same(a, q)]
        positives = [p for p in range(n) if p != a and same(a, p)]
        if not negatives or not positives:
            continue
        if mining == "batch_hard":
            losses.append(torch.relu(max(dist[a, p] for p in positives) - min(negatives) + margin))
            continue
        for p in positives:
            farther = [d for d in negatives if d > dist[a, p]]
            chosen = min(farther) if farther else max(negatives)
            losses.append(torch.relu(dist[a, p] - chosen + margin))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("mining", MINING_METHODS)
@pytest.mark.parametrize("squared", [True, False])
def test_vectorised_loss_and_gradient_match_brute_force(mining: str, squared: bool) -> None:
    generator = torch.Generator().manual_seed(11)
    for _ in range(3):
        base = F.normalize(torch.randn(14, 5, generator=generator, dtype=torch.float64), dim=1)
        labels = torch.randint(0, 4, (14,), generator=generator)
        ours_in = base.float().clone().requires_grad_()
        ref_in = base.clone().requires_grad_()
        ours, _ = triplet_loss(ours_in, labels, margin=0.3, mining=mining, squared=squared)
        reference = _reference_loss(ref_in, labels, 0.3, mining, squared)
        ours.backward()
        reference.backward()
        assert ours.item() == pytest.approx(reference.item(), abs=1e-5)
        torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, atol=1e-4, rtol=1e-3)


def test_statistics_match_brute_force_counts() -> None:
    generator = torch.Generator().manual_seed(12)
    emb = F.normalize(torch.randn(16, 3, generator=generator), dim=1)
    labels = torch.arange(4).repeat_interleave(4)
    _, stats = triplet_loss(emb, labels, margin=0.4, mining="semi_hard")
    dist = torch.cdist(emb, emb) ** 2
    triplets = [
        (a, p, q)
        for a, p, q in itertools.product(range(16), repeat=3)
        if a != p and labels[a] == labels[p] and labels[q] != labels[a]
    ]
    farther = sum(bool(dist[a, q] > dist[a, p]) for a, p, q in triplets)
    active = sum(bool(dist[a, p] - dist[a, q] + 0.4 > 0) for a, p, q in triplets)
    assert stats.num_valid_triplets.item() == len(triplets) == 16 * 3 * 12
    assert stats.triplet_accuracy.item() == pytest.approx(farther / len(triplets), abs=1e-6)
    assert stats.active_fraction.item() == pytest.approx(active / len(triplets), abs=1e-6)


def test_identical_embeddings_give_finite_gradients() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    for mining in MINING_METHODS:
        loss, _ = triplet_loss(emb, torch.tensor([0, 0, 1, 1]), margin=0.2, mining=mining, squared=False)
        (grad,) = torch.autograd.grad(loss, emb)
        assert torch.isfinite(grad).all()


def test_batch_without_valid_triplets_gives_connected_zero_loss() -> None:
    emb = torch.randn(4, 3, requires_grad=True)
    loss, stats = TripletLoss(margin=0.2, mining="batch_all")(emb, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and emb.grad is not None and torch.all(emb.grad == 0)
    assert stats.num_valid_triplets.item() == 0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown triplet mining"):
        TripletLoss(mining="hardest")
    with pytest.raises(ValueError, match="positive number"):
        TripletLoss(margin=0.0)
    with pytest.raises(ValueError, match="expected embeddings"):
        triplet_loss(torch.zeros(4, 2), torch.zeros(3))
    assert TripletLoss(margin=1.0, mining="batch_hard").margin == 1.0  # margins up to 1 are allowed


def _toy_identities(num_ids: int, per_id: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """24-D points: a 4-D identity factor buried under a stronger 8-D nuisance (pose/light stand-in)."""
    mixing = np.random.default_rng(0)
    identity_map, nuisance_map = mixing.normal(size=(4, 24)), mixing.normal(size=(8, 24))
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(num_ids), per_id)
    factors = rng.normal(size=(num_ids, 4))[ids]
    nuisance = rng.normal(size=(len(ids), 8)) * 2.0
    points = factors @ identity_map + nuisance @ nuisance_map + 0.3 * rng.normal(size=(len(ids), 24))
    return torch.tensor(points, dtype=torch.float32), ids


def _held_out_accuracy(model: torch.nn.Module, points: torch.Tensor, ids: np.ndarray) -> float:
    """LFW-protocol accuracy (2 folds) on all same pairs and as many random different pairs."""
    rng = np.random.default_rng(5)
    same_pairs = [(i, j) for i, j in itertools.combinations(range(len(ids)), 2) if ids[i] == ids[j]]
    diff_pairs: list[tuple[int, int]] = []
    while len(diff_pairs) < len(same_pairs):
        i, j = rng.integers(0, len(ids), 2)
        if ids[i] != ids[j]:
            diff_pairs.append((int(i), int(j)))
    pairs = np.array(same_pairs + diff_pairs)
    same = np.array([True] * len(same_pairs) + [False] * len(diff_pairs))
    order = rng.permutation(len(pairs))
    with torch.no_grad():
        emb = F.normalize(model(points), dim=1).numpy()
    scores, higher = pair_scores(emb[pairs[order, 0]], emb[pairs[order, 1]], "cosine")
    return verification_metrics(scores, same[order], folds=2, higher_is_same=higher).accuracy


@pytest.mark.parametrize("mining", ["semi_hard", "batch_all"])
def test_triplet_training_learns_identity_and_generalises_to_unseen_identities(mining: str) -> None:
    train_x, train_ids = _toy_identities(40, 10, seed=1)
    test_x, test_ids = _toy_identities(20, 10, seed=2)  # identities never seen in training
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = TripletLoss(margin=0.2, mining=mining)
    before = _held_out_accuracy(model, test_x, test_ids)
    losses, accuracies = [], []
    for batch in PKBatchSampler(train_ids, p=8, k=4, seed=0, batches_per_epoch=200):
        loss, stats = criterion(F.normalize(model(train_x[batch]), dim=1), torch.as_tensor(train_ids[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        accuracies.append(stats.triplet_accuracy.item())
    after = _held_out_accuracy(model, test_x, test_ids)
    assert before < 0.6  # the nuisance dominates a random projection: near chance
    assert after > 0.8
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])
    assert np.mean(accuracies[-20:]) > 0.9 > np.mean(accuracies[:20])
