"Tests of mes_mtl.losses: masking, empty tasks, reductions, weight buffers, focal loss, activation/decodes."
import pytest
import torch
import torch.nn.functional as F

from mes_mtl.labels import mes_to_tasks
from mes_mtl.losses import JointLoss, masked_cross_entropy


def _batch(mes, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    preds = tuple(torch.randn(len(mes), 2, generator=g).requires_grad_(requires_grad) for _ in range(3))
    targets = [torch.as_tensor(t) for t in mes_to_tasks(mes).T]
    return preds, targets


def test_equals_per_task_masked_cross_entropy():
    preds, targets = _batch([0, 1, 2, 3, 3, 0, 1])
    expected = sum(F.cross_entropy(p, y, ignore_index=-1) for p, y in zip(preds, targets)) / 3
    torch.testing.assert_close(JointLoss()(preds, *targets), expected)
    torch.testing.assert_close(JointLoss()(preds, torch.stack(targets, 1)), expected)


def test_masked_items_do_not_matter():
    preds, targets = _batch([0, 1, 2, 3])
    changed = (preds[0], preds[1].clone(), preds[2].clone())
    changed[1][2:] = 1e4  # remission logits of the MES 2, 3 images
    changed[2][:2] = torch.tensor([[-1e4, 1e4]] * 2)  # active logits of the MES 0, 1 images
    torch.testing.assert_close(JointLoss()(changed, *targets), JointLoss()(preds, *targets))


@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
@pytest.mark.parametrize('focal_gamma', [0., 2.])
def test_empty_task_gives_zero_and_finite_gradients(reduction, focal_gamma):
    preds, targets = _batch([0, 1, 1], requires_grad=True)  # no item for the active task
    loss_func = JointLoss(reduction=reduction, focal_gamma=focal_gamma)
    loss = loss_func(preds, *targets)
    without_active = JointLoss(weights=(1/3, 1/3, 0), reduction=reduction, focal_gamma=focal_gamma)(preds, *targets)
    torch.testing.assert_close(loss, without_active)
    loss.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in preds)
    assert torch.equal(preds[2].grad, torch.zeros(3, 2))
    nothing = [torch.full((3,), -1)] * 3
    zero = loss_func(preds, *nothing)
    assert torch.equal(zero, torch.zeros_like(zero)) and zero.requires_grad


def test_reductions_are_consistent():
    preds, targets = _batch([0, 1, 2, 3, 2, 0])
    per_item = JointLoss(reduction='none')(preds, *targets)
    assert per_item.shape == (6,)
    torch.testing.assert_close(per_item.sum(), JointLoss(reduction='sum')(preds, *targets))
    torch.testing.assert_close(per_item.mean(), JointLoss(task_mean='batch')(preds, *targets))
    with pytest.raises(ValueError, match='reduction'):
        JointLoss(reduction='avg')


def test_class_weights_give_torch_weighted_mean():
    preds, targets = _batch([0, 1, 2, 3, 3, 1, 0])
    w = torch.tensor([[1., 4.], [0.5, 2.], [1., 3.]])
    expected = sum(F.cross_entropy(p, y, weight=wt, ignore_index=-1) for p, y, wt in zip(preds, targets, w)) / 3
    torch.testing.assert_close(JointLoss(class_weights=w)(preds, *targets), expected)
    loss_func = JointLoss()
    for i, task in enumerate(['primary', 'remission', 'active']): loss_func.set_class_weights(task, w[i])
    torch.testing.assert_close(loss_func(preds, *targets), expected)


def test_bad_input_is_refused():
    preds, targets = _batch([0, 1])
    with pytest.raises(ValueError, match='got \\[2\\]'):
        JointLoss()(preds, targets[0], targets[1], torch.tensor([2, -1]))
    with pytest.raises(ValueError, match='3 logits and 3 targets'):
        JointLoss()(preds[0], *targets)
    with pytest.raises(ValueError, match='task must be one of'):
        JointLoss().set_class_weights('severe', [1., 1.])
    with pytest.raises(ValueError, match='shape \\(3,\\)'):
        JointLoss(weights=(1., 1.))


def test_buffers_move_with_to_and_survive_state_dict():
    loss_func = JointLoss(weights=(0.5, 0.3, 0.2)).set_class_weights('active', [1., 3.])
    assert set(dict(loss_func.named_buffers())) == {'weights', 'class_weights'}
    assert loss_func.to(torch.float64).class_weights.dtype == torch.float64
    assert loss_func.to('meta').weights.device.type == 'meta'
    fresh = JointLoss()
    fresh.load_state_dict(JointLoss(weights=(0.5, 0.3, 0.2)).set_class_weights('active', [1., 3.]).state_dict())
    torch.testing.assert_close(fresh.weights, torch.tensor([0.5, 0.3, 0.2]))
    torch.testing.assert_close(fresh.class_weights[2], torch.tensor([1., 3.]))


def test_focal_gamma_zero_is_cross_entropy_and_focal_is_correct():
    preds, targets = _batch([0, 1, 2, 3, 1])
    torch.testing.assert_close(JointLoss(focal_gamma=0.)(preds, *targets), JointLoss()(preds, *targets))
    logits, y = preds[0], targets[0]
    p_t = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    focal, _ = masked_cross_entropy(logits, y, focal_gamma=2.)
    torch.testing.assert_close(focal, -(1 - p_t) ** 2 * p_t.log())
    confident = (torch.tensor([[200., -200.]]),) * 3  # p_t == 1 exactly: focal factor 0, gradient still finite
    confident = tuple(c.clone().requires_grad_() for c in confident)
    JointLoss(focal_gamma=0.5)(confident, *[torch.tensor([0])] * 3).backward()
    assert all(torch.isfinite(c.grad).all() for c in confident)


def test_activation_and_decodes_give_mes():
    preds = tuple(torch.tensor([[9., -9.], [-9., 9.]]) for _ in range(3))  # image 0: MES 0, image 1: MES 3
    probs = JointLoss().activation(preds)
    torch.testing.assert_close(probs[0].sum(1), torch.ones(2))
    assert JointLoss().decodes(probs).tolist() == [0, 3]
    assert JointLoss(decode_rule='hier').decodes(probs).tolist() == [0, 3]
