"""PULoss and ConsistencyLoss against values worked out by hand (formulas in the comments)."""
import pytest
import torch

from losses import ConsistencyLoss, PULoss

# Batch A: two labeled particles (label 1) and three unlabeled patches (label 0), prior 0.4.
LOGITS_A = [2.0, -1.0, 0.5, -0.5, 3.0]
LABELS_A = [1, 1, 0, 0, 0]
# Batch B: the model calls every unlabeled patch background and every particle confident: with prior
# 0.5 the unbiased negative risk sigmoid(-3) - 0.5 * sigmoid(3) = 0.047426 - 0.476287 goes negative.
LOGITS_B = [3.0, 3.0, -3.0, -3.0, -3.0]
LABELS_B = [1, 1, 0, 0, 0]


def pu_parts(logits, labels, **kwargs):
    logits = torch.tensor(logits, requires_grad=True)
    objective, parts = PULoss(**kwargs)(logits, torch.tensor(labels))
    objective.backward()
    return objective, parts, logits.grad


@pytest.mark.parametrize("loss, positive_risk, negative_risk", [
    # sigmoid: 0.4 * mean(sigmoid(-2), sigmoid(1)); mean sigmoid(U) - 0.4 * mean(sigmoid(2), sigmoid(-1))
    ("sigmoid", 0.170052, 0.420910),
    # logistic: the same with softplus(-margin) in place of sigmoid(-margin)
    ("logistic", 0.288038, 1.010876),
])
def test_pu_risks_match_hand_values(loss, positive_risk, negative_risk):
    objective, parts, _ = pu_parts(LOGITS_A, LABELS_A, prior=0.4, loss=loss)
    assert parts["positive_risk"].item() == pytest.approx(positive_risk, abs=1e-5)
    assert parts["negative_risk"].item() == pytest.approx(negative_risk, abs=1e-5)
    assert parts["risk"].item() == pytest.approx(positive_risk + negative_risk, abs=1e-5)
    assert objective.item() == pytest.approx(positive_risk + negative_risk, abs=1e-5)
    assert parts["nn_correction"].item() == 0.0
    assert not parts["risk"].requires_grad


def test_non_negative_correction_steps_on_minus_gamma_negative_risk():
    objective, parts, grad = pu_parts(LOGITS_B, LABELS_B, loss="sigmoid", prior=0.5, gamma=0.5)
    assert parts["nn_correction"].item() == 1.0
    assert parts["negative_risk"].item() == pytest.approx(-0.428861, abs=1e-5)
    assert parts["risk"].item() == pytest.approx(0.023713, abs=1e-5)  # positive risk - beta (0)
    assert objective.item() == pytest.approx(0.214431, abs=1e-5)  # -0.5 * -0.428861

    reference = torch.tensor(LOGITS_B, requires_grad=True)
    negative_risk = torch.sigmoid(reference[2:]).mean() - 0.5 * torch.sigmoid(reference[:2]).mean()
    (-0.5 * negative_risk).backward()
    torch.testing.assert_close(grad, reference.grad)
    # the step raises unlabeled logits and lowers labeled ones, pulling the negative risk back up
    assert (grad[2:] < 0).all() and (grad[:2] > 0).all()


def test_beta_keeps_the_unbiased_risk_while_above_minus_beta():
    objective, parts, _ = pu_parts(LOGITS_B, LABELS_B, loss="sigmoid", prior=0.5, beta=0.5)
    assert parts["nn_correction"].item() == 0.0
    assert objective.item() == pytest.approx(0.023713 - 0.428861, abs=1e-5)


def test_upu_returns_the_raw_negative_risk():
    objective, parts, _ = pu_parts(LOGITS_B, LABELS_B, loss="sigmoid", prior=0.5, nnpu=False)
    assert objective.item() == pytest.approx(-0.405148, abs=1e-5)
    assert parts["risk"].item() == pytest.approx(-0.405148, abs=1e-5)
    assert parts["nn_correction"].item() == 0.0


def test_known_negatives_add_a_supervised_term():
    # 2.0 * mean(sigmoid(1), sigmoid(-2)) = 0.850262; they do not count as unlabeled
    objective, parts, grad = pu_parts(LOGITS_A + [1.0, -2.0], LABELS_A + [-1, -1], loss="sigmoid", prior=0.4,
                                      negative_weight=2.0)
    assert parts["known_negative_risk"].item() == pytest.approx(0.850262, abs=1e-5)
    assert parts["negative_risk"].item() == pytest.approx(0.420910, abs=1e-5)
    assert parts["risk"].item() == pytest.approx(0.590962 + 0.850262, abs=1e-5)
    assert objective.item() == pytest.approx(0.590962 + 0.850262, abs=1e-5)
    assert (grad[5:] > 0).all()


def test_known_negatives_also_join_the_corrected_objective():
    objective, parts, _ = pu_parts(LOGITS_B + [1.0, -2.0], LABELS_B + [-1, -1], loss="sigmoid", prior=0.5, gamma=0.5,
                                   negative_weight=2.0)
    assert parts["nn_correction"].item() == 1.0
    assert objective.item() == pytest.approx(0.214431 + 0.850262, abs=1e-5)


@pytest.mark.parametrize("prior", [0.0, 1.0, 1.3, -0.2])
def test_prior_outside_unit_interval_raises(prior):
    with pytest.raises(ValueError, match="--use-data-prior"):
        PULoss(prior)


def test_unknown_surrogate_and_batch_without_positives_raise():
    with pytest.raises(ValueError, match="logistic"):
        PULoss(0.3, loss="hinge")
    with pytest.raises(ValueError, match="no labeled positive"):
        PULoss(0.3)(torch.zeros(4), torch.tensor([0, 0, 0, -1]))


# Consistency batch: labels 1, 0, 0, 0, 0, -1. sigmoid(weak): 0.993, 0.953, 0.076, 0.622, 0.018, 0.982.
WEAK = [5.0, 3.0, -2.5, 0.5, -4.0, 4.0]
STRONG = [0.0, 1.0, 0.5, -1.0, -3.0, 2.0]
LABELS = [1, 0, 0, 0, 0, -1]
TRUE = [1, 1, 1, 0, -1, 0]


def consistency(selective=True, lambda_consistency=1.0, labels=LABELS, true_label=None):
    strong = torch.tensor(STRONG, requires_grad=True)
    weak = torch.tensor(WEAK, requires_grad=True)
    loss_fn = ConsistencyLoss(threshold=0.9, lambda_consistency=lambda_consistency, selective=selective)
    loss, parts = loss_fn(weak, strong, torch.tensor(labels), true_label)
    loss.backward()
    return loss, parts, strong.grad, weak.grad


def test_selective_consistency_matches_hand_values():
    loss, parts, strong_grad, weak_grad = consistency(lambda_consistency=2.0, true_label=torch.tensor(TRUE))
    # unlabeled 1, 2, 4 are confident (pseudo 1, 0, 0); 3 (p = 0.62) is not:
    # 2 * (softplus(-1) + softplus(0.5) + softplus(-3)) / 4 unlabeled = 2 * 1.335926 / 4
    assert loss.item() == pytest.approx(0.667963, abs=1e-5)
    assert parts["mask_rate"].item() == pytest.approx(3 / 4)
    assert parts["pseudo_positive_rate"].item() == pytest.approx(1 / 3)
    assert parts["unlabeled_positive_rate"].item() == pytest.approx(2 / 4)
    assert "prior" not in parts  # pi is the loss's own parameter, not a logged part
    # judged: 1 (pseudo 1, true 1: right), 2 (pseudo 0, true 1: wrong); 4 has no true label
    assert parts["pseudo_label_accuracy"].item() == pytest.approx(1 / 2)
    assert weak_grad is None
    assert torch.equal(strong_grad != 0, torch.tensor([False, True, True, False, True, False]))


def test_non_selective_consistency_includes_labeled_samples():
    loss, parts, strong_grad, _ = consistency(selective=False)
    # adds softplus(-0) = ln 2 (labeled particle) and softplus(-2) (known negative called positive)
    assert loss.item() == pytest.approx(0.359334, abs=1e-5)
    assert parts["mask_rate"].item() == pytest.approx(5 / 6)
    assert strong_grad[0] != 0 and strong_grad[3] == 0


def test_consistency_without_unlabeled_samples_is_zero_with_a_grad_path():
    loss, parts, strong_grad, _ = consistency(labels=[1, 1, 1, 1, -1, -1])
    assert loss.item() == 0.0
    assert parts["mask_rate"].item() == 0.0
    assert torch.equal(strong_grad, torch.zeros(6))


def test_consistency_rejects_bad_settings():
    with pytest.raises(ValueError, match="threshold"):
        ConsistencyLoss(threshold=0.3)
    with pytest.raises(ValueError, match="negative"):
        ConsistencyLoss(lambda_consistency=-1.0)


def test_prior_alignment_reweights_pseudo_labels_by_bayes_rule():
    loss_fn = ConsistencyLoss(threshold=0.9, prior=0.5, alignment_momentum=0.0)
    # teacher probabilities 0.1, 0.2, 0.3, 0.4 on four unlabeled patches: batch mean m = 0.25
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    weak = torch.log(p / (1 - p))
    labels = torch.zeros(4, dtype=torch.long)
    # prior 0.5: r = 0.5 / 0.25 = 2, s = 0.5 / 0.75 = 2/3; p' = 2p / (2p + (1 - p) 2/3)
    expected = 2 * p / (2 * p + (1 - p) * 2 / 3)   # 0.25, 0.4286, 0.5625, 0.6667
    assert torch.allclose(loss_fn.aligned(p, labels == 0, 0.5), expected, atol=1e-6)
    _, parts = loss_fn(weak, torch.zeros(4), labels)
    # two of four aligned probabilities now lean positive (0.5625, 0.667): the prior's share
    assert float(parts["unlabeled_positive_rate"]) == pytest.approx(0.5)
    assert float(loss_fn.mean_probability) == pytest.approx(0.25)
    loss_fn.eval()  # no alignment (and no running-mean update) outside training
    _, parts = loss_fn(weak, torch.zeros(4), labels)
    assert float(parts["unlabeled_positive_rate"]) == 0.0
