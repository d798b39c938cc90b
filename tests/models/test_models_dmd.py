"""The DMD network (Jun et al. 2022): shapes at 384x512 and small sizes, feature transfer, MDR."""
import pytest
import torch

from mlrb.models.dmd import build_dmd, mdr_queries_for
from mlrb.models.encoder import create_encoder
from mlrb.models.mdr import MDR


pytestmark = pytest.mark.usefixtures("one_thread")


def _hook_shapes(net):
    shapes = {}

    def keep(name):
        def f(_m, _i, o):
            shapes[name] = tuple((o[0] if isinstance(o, tuple) else o).shape[-3:])
        return f
    for d, dec in net.nets.items():
        dec.head_conv.register_forward_hook(keep(f"{d}0"))
        for i, blk in enumerate(dec.blocks):
            blk.register_forward_hook(keep(f"{d}{i + 1}"))
        dec.last.register_forward_hook(keep(f"{d}5"))
        if dec.mdr is not None:
            dec.mdr.embed.register_forward_hook(keep("patches"))
            dec.mdr.register_forward_hook(keep("mdr"))
    return shapes


def test_shapes_at_the_paper_size():
    # timm's tiny test_efficientnet has the strides (4..32) and the head conv of B5; n_d 64
    # instead of 1024 (widths n_d >> k); the B5 numbers are in the README.
    torch.manual_seed(0)
    net = build_dmd("test_efficientnet", n_d=64, size=(384, 512)).eval()
    mdr = net.nets["m"].mdr
    assert mdr.num_queries == 191 and mdr.num_patches(96, 128) == 192
    shapes = _hook_shapes(net)
    with torch.no_grad():
        out = net(torch.rand(1, 3, 384, 512))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "G": (1, 2, 384, 512), "N": (1, 1, 384, 512), "m": (1, 1, 384, 512), "mu": (1,)}
    for d in "gnm":
        assert shapes[f"{d}0"] == (64, 12, 16)
        assert shapes[f"{d}1"] == (32, 12, 16)  # block 1 fuses the stride-32 stage: no up-sampling
        assert shapes[f"{d}2"] == (16, 24, 32)
        assert shapes[f"{d}3"] == (8, 48, 64)
        assert shapes[f"{d}4"] == (4, 96, 128)
        assert shapes[f"{d}5"] == (2, 192, 256)
    assert shapes["patches"] == (128, 12, 16)  # 192 patch vectors of 128 dimensions
    assert shapes["mdr"] == (4, 96, 128)


def test_variants_and_small_size_backward():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 32, 48)
    net = build_dmd("test_efficientnet", n_d=64, size=(32, 48), mdr_patch=2)
    assert net.nets["m"].mdr.num_queries == 23  # 8x12 at stride 4 -> 4x6 patches of 2x2, one for mu
    out = net(img)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "G": (2, 2, 32, 48), "N": (2, 1, 32, 48), "m": (2, 1, 32, 48), "mu": (2,)}
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert set(build_dmd("test_efficientnet", n_d=32, decoders="gn", size=(32, 48))(img)) == {"G", "N"}
    base = build_dmd("test_efficientnet", n_d=32, decoders="m", mdr="none", size=(32, 48))
    assert set(base(img)) == {"m"} and base.nets["m"].mdr is None  # 'Baseline'
    star = build_dmd("test_efficientnet", n_d=32, mdr="no-mu", size=(32, 48), mdr_patch=2)
    assert set(star(img)) == {"G", "N", "m"} and star.nets["m"].mdr.regressor is None  # MDR*
    counts = net.param_counts()
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    with pytest.raises(ValueError, match="MDR needs at least 2"):
        mdr_queries_for((32, 48), patch=8)
    with pytest.raises(ValueError, match="subset of 'gnm'"):
        build_dmd("test_efficientnet", n_d=32, decoders="xyz", size=(32, 48))


def test_feature_transfer_eq6():
    torch.manual_seed(0)
    net = build_dmd("test_efficientnet", n_d=32, size=(32, 48), mdr="none").eval()
    seen = {}

    def out_hook(name):
        def f(_m, _i, o):
            seen[name] = o
        return f

    def in_hook(name):
        def f(_m, args):
            seen[name] = args[0]
        return f
    for d, dec in net.nets.items():
        dec.head_conv.register_forward_hook(out_hook(f"{d}0"))
        for i, blk in enumerate(dec.blocks):
            blk.register_forward_hook(out_hook(f"{d}{i + 1}"))
            blk.register_forward_pre_hook(in_hook(f"{d}{i + 1}.in"))
        dec.last.register_forward_pre_hook(in_hook(f"{d}5.in"))
    with torch.no_grad():
        net(torch.rand(1, 3, 32, 48))
    for k in range(4):  # inputs of blocks 1-4: own stage feature + the previous decoder's (omega = 1)
        assert torch.allclose(seen[f"g{k + 1}.in"], seen[f"g{k}"])
        assert torch.allclose(seen[f"n{k + 1}.in"], seen[f"n{k}"] + seen[f"g{k}"])
        assert torch.allclose(seen[f"m{k + 1}.in"], seen[f"m{k}"] + seen[f"n{k}"])
    assert torch.equal(seen["n5.in"], seen["n4"])  # no transfer before block 5


def test_mdr_mean_path():
    torch.manual_seed(0)
    net = build_dmd("test_efficientnet", n_d=32, size=(32, 48), mdr_patch=2).eval()
    img = torch.rand(2, 3, 32, 48)
    net.init_output_depth(3.0)
    m_net = net.nets["m"]
    with torch.no_grad():
        m_net.conv_out.weight.zero_()
        out = net(img)
    # With M-Net's own output zeroed, m is mu_M everywhere (added back at the end, Sec. 3.3).
    assert torch.allclose(out["m"], out["mu"].view(-1, 1, 1, 1).expand_as(out["m"]))
    # The regressor's last layer starts at 1/(d+1) and is followed by the (random) rest.
    assert m_net.mdr.regressor[-1].bias.item() == pytest.approx(0.25)
    # L_mu reaches the transformer through the first patch vector only.
    out = net(img)
    out["mu"].sum().backward()
    assert m_net.mdr.regressor[0].weight.grad.abs().sum() > 0
    assert m_net.mdr.embed.weight.grad.abs().sum() > 0
    assert m_net.mdr.conv.weight.grad is None  # the 3x3 conv feeds only the features
    with pytest.raises(ValueError, match="needs 24..500"):
        m_net.mdr(torch.rand(1, 2, 8, 8))


def test_encoder_with_head_returns_the_conv_head_features():
    enc, info = create_encoder("tf_efficientnet_b0", out_indices=(1, 2, 3, 4), with_head=True)
    assert info.channels == (24, 40, 112, 320, 1280) and info.reductions == (4, 8, 16, 32, 32)
    with torch.no_grad():
        feats = enc(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2), (1280, 2, 2)]


def test_mdr_block_counts():
    block = MDR(64)
    n = sum(p.numel() for p in block.parameters())
    # 8x8 embedding 524,416 + 3x3 conv 73,856 + 4 layers x 329,856 + positions 64,000
    # + regressor 99,073 + 1x1 projection 12,288
    assert n == 524_416 + 73_856 + 4 * 329_856 + 64_000 + 99_073 + 12_288


@pytest.mark.parametrize("patch", [0, -1])
def test_mdr_queries_for_rejects_a_patch_below_one(patch):
    with pytest.raises(ValueError, match="--mdr-patch"):  # 0 used to be a ZeroDivisionError
        mdr_queries_for((32, 32), patch)
