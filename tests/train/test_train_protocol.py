"""Evaluation protocols: Lee & Kim's crop / up-sampling, KITTI crops on the benchmark crop, TTA."""
import pytest
import torch

from mlrb.metrics.depth import crop_box
from mlrb.train.protocol import eval_mask, eval_prediction


def test_lee_kim_crop_is_the_public_code_box():
    gt = torch.ones(2, 1, 480, 640)
    crop, mask = eval_mask({"mask": gt > 0}, gt, "lee_kim_nyu")
    assert crop is None
    expected = torch.zeros(480, 640, dtype=torch.bool)
    expected[20:460, 24:616] = True
    assert torch.equal(mask[0, 0], expected) and torch.equal(mask[1, 0], expected)
    # Other names go to the metrics unchanged.
    assert eval_mask({"mask": gt > 0}, gt, "nyu_eigen")[0] == "nyu_eigen"


def test_kitti_crop_on_the_benchmark_crop_matches_the_full_frame():
    H, W = 375, 1242
    top, left = H - 352, (W - 1216) // 2
    for name in ("kitti_garg", "kitti_eigen"):
        full = torch.zeros(H, W, dtype=torch.bool)
        t, b, l, r = crop_box(H, W, name)
        full[t:b, l:r] = True
        gt = torch.ones(1, 1, 352, 1216)
        crop, mask = eval_mask({"mask": gt > 0, "kb_box": torch.tensor([[top, left, H, W]])}, gt, name)
        assert crop is None
        assert torch.equal(mask[0, 0], full[top:, left:left + 1216])
        assert full[top:, left:left + 1216].sum() == full.sum()  # the crop lies inside the benchmark crop


def test_prediction_is_upsampled_to_the_ground_truth_and_tta_applies():
    model = lambda x: x[:, :1] * 0 + torch.linspace(1, 2, x.shape[-1])  # depth grows to the right
    img = torch.rand(1, 3, 8, 12)
    pred = eval_prediction(model, img, (16, 24), upsample="bicubic")
    assert pred.shape == (1, 1, 16, 24)
    # The flip test averages with the mirrored prediction: a left-right ramp becomes flat.
    flat = eval_prediction(model, img, (8, 12), tta="flip")
    assert torch.allclose(flat, torch.full_like(flat, 1.5))
    sw = eval_prediction(model, img, (8, 12), tta="flip+sw")
    assert sw.shape == (1, 1, 8, 12) and torch.isfinite(sw).all()
    with pytest.raises(ValueError, match="tta"):
        eval_prediction(model, img, (8, 12), tta="multi-scale")
