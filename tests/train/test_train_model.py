"""The depth estimator: decoder of Fig. S-8, timm encoder, local-only pretrained weights."""
import pytest
import timm
import torch
from torch import nn

from mlrb.models import PRESETS, Decoder, PretrainedWeightsError, UpBlock, build_model


def test_decoder_follows_fig_s8():
    dec = Decoder(n_e=512, n_d=64)
    assert isinstance(dec.conv_in, nn.Conv2d) and dec.conv_in.kernel_size == (1, 1)
    assert (dec.conv_in.in_channels, dec.conv_in.out_channels) == (512, 64)
    assert len(dec.blocks) == 5
    n_i = 64
    for block in dec.blocks:
        assert isinstance(block, UpBlock)
        # two 3x3 convs that halve the channels
        assert (block.conv_a.in_channels, block.conv_a.out_channels) == (n_i, n_i // 2)
        assert (block.conv_b.in_channels, block.conv_b.out_channels) == (n_i // 2, n_i // 2)
        assert block.conv_a.kernel_size == block.conv_b.kernel_size == (3, 3)
        n_i //= 2
    assert (dec.conv_out.in_channels, dec.conv_out.out_channels, dec.conv_out.kernel_size) == (2, 1, (3, 3))
    # five bilinear x2: 2x3 -> 64x96
    assert dec(torch.rand(1, 512, 2, 3)).shape == (1, 1, 64, 96)


def test_decoder_rejects_bad_n_d():
    with pytest.raises(ValueError, match="n_d"):
        Decoder(512, n_d=48)


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (70, 90)])
def test_model_output_matches_input(size):
    torch.manual_seed(0)
    model = build_model("resnet18", n_d=32)
    assert model.info.n_e == 512 and model.info.reduction == 32
    out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_softplus_head_is_positive_and_bad_input_raises():
    model = build_model("resnet18", n_d=32, head="softplus")
    assert (model(torch.rand(1, 3, 64, 64)) > 0).all()
    with pytest.raises(ValueError, match="RGB"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="head"):
        build_model("resnet18", n_d=32, head="relu6")


def test_presets_are_timm_models():
    for name in ("densenet161", "pnasnet5large", "efficientnet_b5", "resnet18"):
        assert name in PRESETS and timm.is_model(PRESETS[name]["timm_name"])
    with pytest.raises(ValueError, match="unknown encoder"):
        build_model("not_a_backbone_xyz")


def test_pretrained_from_local_file(tmp_path):
    torch.manual_seed(1)
    full = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    torch.manual_seed(2)  # a different random init, so equality proves the load
    model = build_model("resnet18", n_d=32, pretrained=str(path))
    assert model.info.pretrained == str(path)
    assert torch.equal(model.encoder.conv1.weight, full.conv1.weight)
    assert torch.equal(model.encoder.layer4[1].conv2.weight, full.layer4[1].conv2.weight)


def test_pretrained_missing_gives_clear_error_or_random(tmp_path, monkeypatch):
    with pytest.raises(PretrainedWeightsError, match="never downloads"):
        build_model("resnet18", n_d=32, pretrained=str(tmp_path / "nope.pth"))
    # An empty cache: 'cache' must fail without going to the network.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    import mlrb.models.encoder as model_mod
    monkeypatch.setattr(model_mod, "_cached_weights_file", lambda name: None)
    with pytest.raises(PretrainedWeightsError, match="cache"):
        build_model("resnet18", n_d=32, pretrained="cache")
    with pytest.warns(RuntimeWarning, match="random initialisation"):
        model = build_model("resnet18", n_d=32, pretrained="cache", random_if_missing=True)
    assert model.info.pretrained == "random"


def test_corrupt_pretrained_file(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="could not load"):
        build_model("resnet18", n_d=32, pretrained=str(path))


def test_pretrained_file_of_another_model_is_refused(tmp_path):
    # timm loads features_only weights with strict=False: a foreign file loaded nothing, silently
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3), "fc.weight": torch.zeros(4, 4)}, tmp_path / "other.pth")
    with pytest.raises(PretrainedWeightsError, match="only 0 of the .* conv/linear weights"):
        build_model("resnet18", n_d=32, pretrained=str(tmp_path / "other.pth"))
    # a DDP-style wrapped state dict is unwrapped by timm, and accepted
    full = timm.create_model("resnet18", pretrained=False)
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, tmp_path / "ddp.pth")
    model = build_model("resnet18", n_d=32, pretrained=str(tmp_path / "ddp.pth"))
    assert torch.equal(model.encoder.conv1.weight, full.conv1.weight)
