"""Loss presets and both IoU definitions, against hand computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from climseg.errors import ConfigError
from climseg.losses import (
    DEEPCAM_FREQUENCIES,
    JaccardLoss,
    WeightedCrossEntropy,
    build_loss,
    class_weights,
    jaccard_loss,
)
from climseg.metrics import ConfusionMatrix, count_objects, deepcam_iou, label_components


def test_presets_by_hand():
    f = np.array([0.9, 0.02, 0.08])
    w = class_weights("kurth2018", f).double().numpy()
    expected = 1 / np.sqrt(f)
    np.testing.assert_allclose(w, expected / expected.sum(), rtol=1e-6)
    np.testing.assert_allclose(class_weights("deepcam", f).double().numpy(), f**-0.125, rtol=1e-6)
    # the MLPerf reference's hard-coded weights
    ref = [0.986267818390377**-0.125, 0.0004578708870701058**-0.125, 0.01327431072255291**-0.125]
    np.testing.assert_allclose(class_weights("deepcam").numpy(), ref, rtol=1e-6)
    assert class_weights("deepcam", [9, 0.2, 0.8]).tolist() == pytest.approx(
        (np.array([0.9, 0.02, 0.08]) ** -0.125).tolist()
    )
    with pytest.raises(ConfigError, match="unknown loss weight preset"):
        class_weights("focal")
    with pytest.raises(ConfigError, match="non-negative"):
        class_weights("deepcam", [0.5, -0.1, 0.6])


def test_loss_by_hand():
    logits = torch.tensor([[[[2.0]], [[0.0]], [[-1.0]]], [[[0.5]], [[1.5]], [[0.0]]]])  # (2, 3, 1, 1)
    labels = torch.tensor([[[0]], [[1]]])
    w = torch.tensor([0.5, 2.0, 1.0])
    loss = WeightedCrossEntropy(w, reduction="mean")(logits, labels)
    ce0 = math.log(math.exp(2) + 1 + math.exp(-1)) - 2
    ce1 = math.log(math.exp(0.5) + math.exp(1.5) + 1) - 1.5
    assert loss.item() == pytest.approx((0.5 * ce0 + 2.0 * ce1) / 2, rel=1e-6)
    weighted = WeightedCrossEntropy(w, reduction="weighted_mean")(logits, labels)
    assert weighted.item() == pytest.approx((0.5 * ce0 + 2.0 * ce1) / 2.5, rel=1e-6)
    assert torch.allclose(weighted, F.cross_entropy(logits, labels, weight=w))


def test_loss_float32_for_half_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 7)
    labels = torch.randint(0, 3, (2, 5, 7))
    fn = WeightedCrossEntropy("kurth2018")
    out = fn(logits.bfloat16(), labels)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(fn(logits.bfloat16().float(), labels).item(), rel=1e-6)


def test_frequencies_from_stats(small_dataset):
    fn = WeightedCrossEntropy("deepcam", frequencies=small_dataset)
    from climseg.data import read_stats

    f = read_stats(small_dataset + "/stats.h5").class_frequencies
    np.testing.assert_allclose(fn.weight.numpy(), (f / f.sum()) ** -0.125, rtol=1e-5)
    assert WeightedCrossEntropy("deepcam").weight.tolist() == pytest.approx(
        class_weights("deepcam", DEEPCAM_FREQUENCIES).tolist()
    )


def test_deepcam_iou_by_hand():
    # sample 0: TC predicted on 2 pixels, true on 1 -> TP 1, FP 1; AR absent from both -> 1
    pred = torch.tensor([[[0, 1, 1, 0]], [[2, 2, 0, 0]]])
    true = torch.tensor([[[0, 1, 0, 0]], [[2, 0, 0, 1]]])
    bg0 = 2 / (2 + 0 + 1)  # pred bg at 0,3; true bg at 0,2,3 -> TP 2, FN 1
    s0 = (bg0 + 1 / 2 + 1.0) / 3
    bg1 = 1 / (1 + 1 + 1)  # pred bg at 2,3; true bg at 1,2 -> TP 1, FP 1, FN 1
    s1 = (bg1 + 0 / 1 + 1 / 2) / 3  # TC: true at 3 only -> 0; AR: TP 1, FP 1
    assert deepcam_iou(pred, true).item() == pytest.approx((s0 + s1) / 2)
    assert deepcam_iou(true, true).item() == pytest.approx(1.0)


def test_confusion_matrix_by_hand():
    cm = ConfusionMatrix(3)
    pred = torch.tensor([0, 0, 1, 2, 2, 1])
    true = torch.tensor([0, 1, 1, 2, 0, 1])
    cm.update(pred, true)
    assert cm.matrix.tolist() == [[1, 0, 1], [1, 2, 0], [0, 0, 1]]
    iou = cm.iou().tolist()
    assert iou == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    other = ConfusionMatrix(3).update(torch.tensor([2]), torch.tensor([2]))
    cm.merge(other)
    assert cm.iou()[2].item() == pytest.approx(2 / 3)
    d = cm.as_dict()
    assert set(d) == {"iou_background", "iou_tc", "iou_ar", "mean_iou"}
    empty = ConfusionMatrix(3).update(torch.zeros(4), torch.zeros(4))
    assert math.isnan(empty.iou()[1].item()) and empty.mean_iou() == 1.0
    cm.all_reduce()  # no process group: a no-op


def test_objects_join_across_the_date_line():
    m = np.zeros((6, 10), int)
    m[2, 0] = m[2, 9] = 1  # one cyclone split by the seam
    m[3, 0] = 0
    m[5, 9] = 1
    m[4, 0] = 1  # diagonal across the seam: same object as (5, 9)
    m[0, 4:6] = 2
    assert count_objects(m) == {1: 2, 2: 1}
    assert count_objects(m, periodic=False) == {1: 4, 2: 1}
    labels, n = label_components(m == 1)
    assert n == 2 and labels[2, 0] == labels[2, 9]


def test_jaccard_loss_by_hand():
    # two samples of two pixels, three classes; ClimateNet's formula summed by hand
    logits = torch.tensor(
        [[[[1.0, 0.0]], [[0.0, 2.0]], [[-1.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]], [[3.0, -2.0]]]]
    )  # (2, 3, 1, 2)
    labels = torch.tensor([[[0, 1]], [[2, 0]]])
    p = []
    for n in range(2):
        for x in range(2):
            z = [logits[n, c, 0, x].item() for c in range(3)]
            e = [math.exp(v) for v in z]
            p.append(([v / sum(e) for v in e], labels[n, 0, x].item()))
    ratios = []
    for c in range(3):
        inter = sum(pr[c] for pr, y in p if y == c)
        card = sum(pr[c] for pr, _ in p) + sum(1 for _, y in p if y == c)
        ratios.append(inter / (card - inter + 1e-7))
    expected = 1 - sum(ratios) / 3
    assert jaccard_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert jaccard_loss(logits.double(), labels).item() == pytest.approx(expected, rel=1e-12)


def test_jaccard_loss_perfect_and_gradient():
    labels = torch.randint(0, 3, (2, 5, 7))
    perfect = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 60.0
    assert jaccard_loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-5)
    logits = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: jaccard_loss(z, labels), (logits,))


def test_loss_options_and_counts():
    logits, labels = torch.randn(3, 3, 6, 5), torch.randint(0, 3, (3, 6, 5))
    ce = WeightedCrossEntropy("deepcam")
    both, counts = build_loss("ce+jaccard")(logits, labels, return_counts=True)
    assert both.item() == pytest.approx(ce(logits, labels).item() + jaccard_loss(logits, labels).item(), rel=1e-6)
    loss, jcounts = JaccardLoss()(logits, labels, return_counts=True)
    assert torch.equal(counts, jcounts) and counts.shape == (3, 3, 3)
    pred = logits.argmax(1)
    assert jcounts[:, 1, 0].tolist() == [int(((pred[i] == 1) & (labels[i] == 1)).sum()) for i in range(3)]
    assert isinstance(build_loss("ce"), WeightedCrossEntropy)
    with pytest.raises(ConfigError, match="unknown loss"):
        build_loss("dice")
