"""Full-resolution evaluation ground truth (NYUv2 CSV, BTS KITTI "kb_box") and the Make3D list."""
import numpy as np
import pytest
import torch
from PIL import Image

from mlrb.train.datasets import BTSSplit, DataFileError, NYUv2CSV
from mlrb.train.make3d import Make3DList


def _rgb(path, h, w):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _depth16(path, arr):
    Image.fromarray(np.asarray(arr, dtype=np.uint16)).save(path)


def test_full_gt_resizes_only_the_image(tmp_path):
    _rgb(tmp_path / "r.png", 24, 32)
    _depth16(tmp_path / "d.png", np.arange(24 * 32).reshape(24, 32) + 1)
    (tmp_path / "l.csv").write_text("r.png,d.png\n")
    full = NYUv2CSV(str(tmp_path / "l.csv"), size=(12, 16), depth_scale="mm", full_gt=True)[0]
    small = NYUv2CSV(str(tmp_path / "l.csv"), size=(12, 16), depth_scale="mm")[0]
    assert full["image"].shape == small["image"].shape == (3, 12, 16)
    assert full["depth"].shape == (1, 24, 32) and small["depth"].shape == (1, 12, 16)
    assert full["depth"][0, 5, 7] == pytest.approx((5 * 32 + 7 + 1) / 1000)


def test_bts_kitti_reports_where_the_benchmark_crop_sits(tmp_path):
    h, w = 375, 1242
    _rgb(tmp_path / "0.png", h, w)
    _depth16(tmp_path / "g.png", np.full((h, w), 256 * 10))
    (tmp_path / "s.txt").write_text("0.png g.png 721.5\n")
    s = BTSSplit(str(tmp_path / "s.txt"), str(tmp_path), dataset="kitti", size=(176, 608), full_gt=True)[0]
    assert s["image"].shape == (3, 176, 608) and s["depth"].shape == (1, 352, 1216)
    assert s["kb_box"].tolist() == [h - 352, (w - 1216) // 2, h, w]


def test_make3d_list_png_and_npy(tmp_path):
    _rgb(tmp_path / "a.jpg", 40, 30)
    depth = np.linspace(1, 80, 11 * 7, dtype=np.float32).reshape(11, 7)
    _depth16(tmp_path / "a.png", np.round(depth * 256))
    np.save(tmp_path / "b.npy", depth)
    (tmp_path / "list.txt").write_text("a.jpg a.png\na.jpg b.npy\n")
    ds = Make3DList(str(tmp_path / "list.txt"), size=(16, 12), full_gt=True)
    assert ds.max_depth == 70.0 and len(ds) == 2  # the C1 cap
    for i in range(2):
        s = ds[i]
        assert s["image"].shape == (3, 16, 12) and s["depth"].shape == (1, 11, 7)
        assert torch.allclose(s["depth"][0], torch.from_numpy(depth), atol=1 / 256)
    train = Make3DList(str(tmp_path / "list.txt"), size=(16, 12))[0]
    assert train["depth"].shape == (1, 16, 12)
    (tmp_path / "mat.txt").write_text("a.jpg a.mat\n")
    (tmp_path / "a.mat").write_bytes(b"")
    with pytest.raises(DataFileError, match="convert Make3D"):
        Make3DList(str(tmp_path / "mat.txt"))[0]
