"""The AMLR network (Yu & Heo 2023, Fig. 2): gradual deconvolution decoder, SiLU, positive bounded head."""
import pytest
import torch
from torch import nn

from mlrb.models.amlr import AMLRDecoder, build_amlr_model, decoder_widths

TINY_SWIN = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def test_decoder_channels_shrink_gradually_with_silu_after_every_layer():
    assert decoder_widths(1536) == (768, 384, 192, 96)  # Swin-v2-L
    dec = AMLRDecoder(256)
    layers = list(dec.body) + list(dec.head)
    convs = [m for m in layers if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [c.out_channels for c in convs] == [128, 64, 32, 16, 16, 1]
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in convs) == 3
    # Every layer but the output is followed (after its batch norm) by SiLU.
    for i, m in enumerate(layers[:-1]):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nxt = layers[i + 1:i + 3]
            assert any(isinstance(n, nn.SiLU) for n in nxt)


def test_swin_v2_amlr_net_is_positive_and_bounded():
    torch.manual_seed(0)
    model = build_amlr_model("swinv2_tiny_window8_256", max_depth=10.0, input_size=(32, 64), model_kwargs=TINY_SWIN)
    model.init_output_depth(3.0)
    out = model(torch.rand(2, 3, 32, 64))
    assert out.shape == (2, 1, 32, 64)
    assert (out > 0).all() and (out < 10).all()
    assert out.mean().item() == pytest.approx(3.0, rel=0.05)
    out.log().mean().backward()  # the log-depth losses can train it
    with pytest.raises(ValueError, match="max_depth"):
        model.init_output_depth(10.0)
    with pytest.raises(ValueError, match="RGB"):
        model(torch.rand(1, 1, 32, 64))
