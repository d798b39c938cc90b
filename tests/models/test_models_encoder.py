"""create_encoder: (B, C, H, W) features for CNN, Swin-v2 (channels-last, fixed size) and ViT / ConvNeXt."""
import pytest
import torch

from mlrb.models import build_model, create_encoder

# The smallest configurations of each family (random weights, a few thousand parameters).
TINY_SWIN = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
TINY_VIT = dict(embed_dim=16, depth=1, num_heads=1)
TINY_CONVNEXT = dict(dims=(8, 8, 16, 16), depths=(1, 1, 1, 1))


@pytest.mark.parametrize("name,kwargs,layout", [
    ("resnet18", None, "NCHW"),
    ("swinv2_tiny_window8_256", TINY_SWIN, "NHWC"),
    ("convnext_atto", TINY_CONVNEXT, "NCHW"),
    ("vit_tiny_patch16_224", TINY_VIT, "NCHW"),
])
def test_every_family_gives_nchw(name, kwargs, layout):
    torch.manual_seed(0)
    enc, info = create_encoder(name, input_size=(64, 96), model_kwargs=kwargs)
    assert info.layout == layout
    (f,) = enc(torch.rand(2, 3, 64, 96))
    r = info.reductions[-1]
    assert f.shape == (2, info.channels[-1], 64 // r, 96 // r)
    assert torch.isfinite(f).all()


def test_swin_v2_depth_model_trains_a_step():
    # The original crash: build_model on a Swin-v2 handed channels-last maps to the decoder.
    model = build_model("swinv2_tiny_window8_256", n_d=32, input_size=(64, 96), model_kwargs=TINY_SWIN)
    out = model(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 1, 64, 96)
    out.mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)


def test_fixed_size_encoder_pads_smaller_inputs_and_rejects_larger():
    enc, info = create_encoder("swinv2_tiny_window8_256", input_size=(64, 96), model_kwargs=TINY_SWIN)
    assert info.input_size == (64, 96)
    (f,) = enc(torch.rand(1, 3, 64, 64))  # e.g. a square shifted-window test window
    assert f.shape == (1, info.channels[-1], 2, 2)
    with pytest.raises(ValueError, match="fixed input size 64x96.*--size 64 128"):
        enc(torch.rand(1, 3, 64, 128))
    # A CNN takes any size; its info says so.
    _, cnn = create_encoder("resnet18")
    assert cnn.input_size is None


def test_feature_info_and_old_state_dicts_still_work():
    import timm

    enc, info = create_encoder("resnet18")
    assert enc.feature_info.channels() == list(info.channels)  # timm attributes pass through
    raw = timm.create_model("resnet18", features_only=True, out_indices=(-1,))
    enc.load_state_dict(raw.state_dict())  # keys without the wrapper's "model." prefix
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(enc.eval()(x)[0], raw.eval()(x)[-1])
    import copy
    import pickle
    for clone in (copy.deepcopy(enc), pickle.loads(pickle.dumps(enc))):
        assert torch.equal(clone(x)[0], enc(x)[0])
    with pytest.raises(AttributeError):
        enc.no_such_attribute
