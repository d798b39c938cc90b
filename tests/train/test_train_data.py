"""Synthetic set, NYUv2 CSV and BTS split loaders on tiny generated files, augmentation."""
import numpy as np
import pytest
import torch
from PIL import Image

from mlrb.train.datasets import Augment, AugmentedDataset, BTSSplit, DataFileError, NYUv2CSV
from mlrb.train.synthetic import MAX_DEPTH, SyntheticDepth


# ---------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_in_range():
    a, b = SyntheticDepth(6, (32, 48), seed=3), SyntheticDepth(6, (32, 48), seed=3, cache=False)
    for i in (0, 5):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["depth"], y["depth"])
        assert x["image"].shape == (3, 32, 48) and x["depth"].shape == (1, 32, 48)
        assert x["mask"].dtype == torch.bool and x["mask"].all()
        assert 0 <= x["image"].min() and x["image"].max() <= 1
        assert 0.1 < x["depth"].min() and x["depth"].max() <= MAX_DEPTH
    assert not torch.equal(a[0]["depth"], a[1]["depth"])
    assert not torch.equal(a[0]["image"], SyntheticDepth(6, (32, 48), seed=4)[0]["image"])
    with pytest.raises(IndexError):
        a[6]
    with pytest.raises(ValueError):
        SyntheticDepth(0)


def test_synthetic_depth_is_visible_in_the_image():
    # Attenuation and shading: far pixels are, on average, closer to the fog grey and
    # darker than near ones — a cue a network can learn depth from.
    ds = SyntheticDepth(8, (48, 64), seed=0)
    corr = []
    for i in range(len(ds)):
        s = ds[i]
        lum = s["image"].mean(0).flatten()
        contrast = (lum - 0.5).abs()
        d = s["depth"].flatten()
        corr.append(torch.corrcoef(torch.stack([contrast, d]))[0, 1])
    assert torch.stack(corr).mean() < -0.2


# ---------------------------------------------------------------- files
def _rgb(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _depth16(path, arr):
    Image.fromarray(np.asarray(arr, dtype=np.uint16)).save(path)


def test_nyu_csv_paper_and_mm_scales(tmp_path):
    h, w = 12, 16
    vals = np.full((h, w), 13107, dtype=np.uint16)  # 13107 / 65535 * 10 = 2.0 m
    vals[0, 0] = 0  # a hole
    (tmp_path / "a").mkdir()
    _rgb(tmp_path / "a" / "rgb0.png", h, w)
    _depth16(tmp_path / "a" / "d0.png", vals)
    (tmp_path / "train.csv").write_text("a/rgb0.png,a/d0.png\n\n")
    ds = NYUv2CSV(str(tmp_path / "train.csv"), size=None)
    s = ds[0]
    assert len(ds) == 1 and s["image"].shape == (3, h, w) and s["depth"].shape == (1, h, w)
    assert torch.allclose(s["depth"][0, 1, 1], torch.tensor(2.0), atol=1e-5)
    assert s["mask"][0, 0, 0].item() is False and s["mask"].sum() == h * w - 1
    mm = NYUv2CSV(str(tmp_path / "train.csv"), size=None, depth_scale="mm")[0]
    assert torch.allclose(mm["depth"][0, 1, 1], torch.tensor(13.107), atol=1e-5)
    resized = NYUv2CSV(str(tmp_path / "train.csv"), size=(24, 32))[0]
    assert resized["image"].shape == (3, 24, 32) and resized["depth"].shape == (1, 24, 32)
    # nearest resize keeps only measured values
    values = torch.unique(resized["depth"])
    assert all(v == 0 or abs(v - 2.0) < 1e-5 for v in values.tolist())


def test_nyu_csv_errors(tmp_path):
    with pytest.raises(DataFileError, match="not found"):
        NYUv2CSV(str(tmp_path / "missing.csv"))
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(DataFileError, match="no rows"):
        NYUv2CSV(str(tmp_path / "empty.csv"))
    (tmp_path / "gone.csv").write_text("x.png,y.png\n")
    with pytest.raises(DataFileError, match="do not exist.*x.png"):
        NYUv2CSV(str(tmp_path / "gone.csv"))
    _rgb(tmp_path / "rgb.png", 8, 8)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "bad.csv").write_text("rgb.png,corrupt.png\n")
    with pytest.raises(DataFileError, match="cannot read depth file .*corrupt.png"):
        NYUv2CSV(str(tmp_path / "bad.csv"))[0]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "d8.png")
    (tmp_path / "eight.csv").write_text("rgb.png,d8.png\n")
    with pytest.raises(DataFileError, match="16-bit"):
        NYUv2CSV(str(tmp_path / "eight.csv"))[0]
    (tmp_path / "short.csv").write_text("rgb.png\n")
    with pytest.raises(DataFileError, match="short.csv:1"):
        NYUv2CSV(str(tmp_path / "short.csv"))
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)))  # e.g. an image given as the list
    with pytest.raises(DataFileError, match="binary.csv: not a text list"):
        NYUv2CSV(str(tmp_path / "binary.csv"))
    with pytest.raises(DataFileError, match="binary.csv: not a text list"):
        BTSSplit(str(tmp_path / "binary.csv"), str(tmp_path))
    (tmp_path / "bom.csv").write_bytes("\ufeffrgb.png,d8.png\n".encode("utf-8"))  # spreadsheet export
    assert NYUv2CSV(str(tmp_path / "bom.csv"), size=None).rows[0][0] == str(tmp_path / "rgb.png")
    _depth16(tmp_path / "d16.png", np.full((4, 6), 3000))  # half the image's size: the error names both files
    (tmp_path / "sizes.csv").write_text("rgb.png,d16.png\n")
    with pytest.raises(DataFileError, match=r"image .*rgb.png is 8x8 but depth .*d16.png is 4x6"):
        NYUv2CSV(str(tmp_path / "sizes.csv"))[0]


def test_bts_nyu_split(tmp_path):
    _rgb(tmp_path / "r.png", 10, 14)
    _depth16(tmp_path / "d.png", np.full((10, 14), 2500))
    (tmp_path / "split.txt").write_text("/r.png /d.png 518.8579\n")
    ds = BTSSplit(str(tmp_path / "split.txt"), str(tmp_path), dataset="nyu", size=(10, 14))
    s = ds[0]
    assert torch.allclose(s["depth"], torch.full((1, 10, 14), 2.5))
    assert s["focal"].item() == pytest.approx(518.8579)
    assert ds.max_depth == 10.0


def test_bts_kitti_split_sparse_crop_and_none(tmp_path):
    h, w = 376, 1242
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    _rgb(tmp_path / "img" / "0.png", h, w)
    d = np.zeros((h, w), np.uint16)
    d[-1, w // 2] = 256 * 20  # one 20 m measurement in the bottom row, inside the crop
    d[0, 0] = 256 * 5  # outside the KITTI benchmark crop
    _depth16(tmp_path / "gt" / "0.png", d)
    (tmp_path / "split.txt").write_text("0.png 0.png 721.5377\nother.png None 721.5377\n")
    ds = BTSSplit(str(tmp_path / "split.txt"), str(tmp_path / "img"), str(tmp_path / "gt"),
                  dataset="kitti", size=(352, 1216))
    assert len(ds) == 1 and ds.skipped == 1 and ds.max_depth == 80.0
    s = ds[0]
    assert s["image"].shape == (3, 352, 1216)
    assert s["mask"].sum() == 1 and s["depth"][s["mask"]].item() == pytest.approx(20.0)
    assert s["mask"][0, -1].any()  # the bottom-row measurement survived the bottom-centred crop
    with pytest.raises(ValueError, match="dataset"):
        BTSSplit(str(tmp_path / "split.txt"), str(tmp_path), dataset="make3d")
    _depth16(tmp_path / "gt" / "1.png", d[:-1, :-1])  # one row and column short: both crop to 352x1216
    _rgb(tmp_path / "img" / "1.png", h, w)
    (tmp_path / "sizes.txt").write_text("1.png 1.png 721.5377\n")
    with pytest.raises(DataFileError, match=r"image .*1.png is 376x1242 but depth .*1.png is 375x1241"):
        BTSSplit(str(tmp_path / "sizes.txt"), str(tmp_path / "img"), str(tmp_path / "gt"), dataset="kitti")[0]
    (tmp_path / "bad.txt").write_text("0.png 0.png notanumber\n")
    with pytest.raises(DataFileError, match="focal"):
        BTSSplit(str(tmp_path / "bad.txt"), str(tmp_path / "img"), str(tmp_path / "gt"), dataset="kitti")


# ---------------------------------------------------------------- augmentation
def _sample():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(1, 6, 8, generator=g) + 1
    return {"image": torch.rand(3, 6, 8, generator=g), "depth": depth, "mask": depth > 1.5}


def test_flip_moves_image_depth_and_mask_together():
    s = _sample()
    out = Augment(flip=1.0, color=0.0, lighting=0.0)(s, torch.Generator().manual_seed(0))
    for k in ("image", "depth", "mask"):
        assert torch.equal(out[k], s[k].flip(-1))
    same = Augment(flip=0.0, color=0.0, lighting=0.0)(s, torch.Generator().manual_seed(0))
    assert all(torch.equal(same[k], s[k]) for k in s)


def test_color_changes_only_the_image_and_is_seeded():
    s = _sample()
    aug = Augment(flip=0.0, color=0.4, lighting=0.1, channel_swap=1.0)
    a = aug(s, torch.Generator().manual_seed(5))
    b = aug(s, torch.Generator().manual_seed(5))
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], s["image"])
    assert torch.equal(a["depth"], s["depth"]) and torch.equal(a["mask"], s["mask"])
    assert 0 <= a["image"].min() and a["image"].max() <= 1
    with pytest.raises(ValueError):
        Augment(flip=2.0)


def test_augmented_dataset_depends_on_seed_epoch_index():
    base = SyntheticDepth(4, (16, 24), seed=0)
    ds = AugmentedDataset(base, Augment(), seed=1)
    first = ds[2]["image"]
    assert torch.equal(AugmentedDataset(base, Augment(), seed=1)[2]["image"], first)
    ds.set_epoch(1)
    changed = [not torch.equal(ds[i]["image"], AugmentedDataset(base, Augment(), seed=1)[i]["image"]) for i in range(4)]
    assert any(changed)
    assert ds.max_depth == base.max_depth
