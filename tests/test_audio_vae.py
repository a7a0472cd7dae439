"""Ovi's audio codec (audio_vae.py): MMAudio's mel, VAE and BigVGAN. The side-by-side check against MMAudio's
own modules needs its repository (`python audio_vae.py --against_mmaudio DIR`); these tests check the parts a
reader can state without it: rates and shapes, the released layout's key maps, weight-norm folding, the mel."""
import math

import pytest
import torch

import audio_vae as av


@pytest.fixture(scope="module")
def small_vae():
    """The VAE's real layout at a tenth of the width (hidden 384 -> 32), random weights."""
    torch.manual_seed(0)
    return av.MelVAE(dim=32).eval()


def test_rates_match_ovis_latent_grid(small_vae):
    """5.12 s at 16 kHz: 320 mel frames (hop 256) -> 160 latents of 20 channels (31.25 a second: Ovi's 157 for 5 s)."""
    wave = torch.randn(1, 16_000 * 512 // 100) * 0.1
    mel = av.LogMel()(wave)
    assert mel.shape == (1, 80, 320)
    z = small_vae.encode(mel)
    assert z.shape == (1, 20, 160)
    assert small_vae.decode(z).shape == (1, 80, 320)
    voc = av.BigVGAN(width=64).eval()
    with torch.no_grad():
        assert voc(mel[..., :10]).shape == (1, 10 * 256)          # 256 samples a mel frame


def test_mel_of_a_tone_peaks_at_its_band():
    """A 1 kHz tone's loudest mel band is the one whose Slaney filter is centred nearest 1 kHz."""
    t = torch.arange(16_000) / 16_000
    mel = av.LogMel()(0.5 * torch.sin(2 * math.pi * 1000 * t)[None])
    band = mel[0, :, 10:-10].mean(1).argmax().item()
    centre = av.LogMel().mel_basis.argmax(1) * 16_000 / av.N_FFT   # each filter's peak, in Hz
    assert abs(centre[band].item() - 1000) <= 60


def released_vae_state(vae: av.MelVAE) -> dict:
    """A state dict in the released v1-16.pth layout: MMAudio's key names, weights before normalisation."""
    return {av.mmaudio_vae_key(n): (p * 3.0 if n.endswith("weight") else p) for n, p in vae.state_dict().items()}


def test_vae_key_map_is_one_to_one_and_loads_normalised_weights(tmp_path, small_vae):
    full = av.MelVAE()
    keys = [av.mmaudio_vae_key(n) for n in full.state_dict()]
    assert len(set(keys)) == len(keys)                            # no two of ours read the same tensor
    assert {"encoder.down.0.downsample.conv1.weight", "decoder.up.1.upsample.conv.weight",
            "decoder.up.2.block.0.conv1.weight", "encoder.mid.attn_1.qkv.weight", "encoder.learnable_gain",
            "encoder.down.1.block.0.nin_shortcut.weight", "data_mean"} <= set(keys)
    state = released_vae_state(small_vae)
    torch.save(state, tmp_path / "v1-16.pth")
    loaded = av.load_mel_vae(str(tmp_path / "v1-16.pth"))
    for w in (loaded.encoder.conv_in.weight, loaded.decoder.levels[0][1].conv2.weight):
        assert torch.allclose(w.flatten(1).norm(dim=1), torch.ones(w.shape[0]), rtol=1e-3)  # norm 1 per output
    x = torch.randn(1, 80, 400)
    assert 0.8 < loaded.encoder.conv_in(x).std().item() < 1.2     # so magnitudes are preserved


def test_weight_norm_folds_both_released_spellings():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose1d(6, 4, 4, 2))
    new = {f"ups.0.0.{k}": v for k, v in conv.state_dict().items()}             # parametrizations.weight.original0/1
    g, v = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
    old = {"ups.0.0.weight_g": g, "ups.0.0.weight_v": v}                       # torch's old weight_norm
    for state in (new, old):
        assert torch.allclose(av.fold_weight_norm(state, "ups.0.0.weight"), conv.weight, atol=1e-6)


def test_bigvgan_loads_a_released_layout_and_keeps_every_tensor(tmp_path):
    torch.manual_seed(0)
    ours = av.BigVGAN(width=64)
    released = {}
    for name, p in ours.state_dict().items():                    # weight-normed as released: g = |v| per dim 0
        key = av.bigvgan_key(name)
        if name.endswith("weight"):
            base = key[: -len(".weight")]
            released[f"{base}.weight_v"] = p
            released[f"{base}.weight_g"] = p.flatten(1).norm(dim=1).view(-1, *[1] * (p.ndim - 1))
        else:
            released[key] = p
    assert "resblocks.17.activations.5.act.beta" in released and "activation_post.act.alpha" in released
    torch.save({"generator": released}, tmp_path / "best_netG.pt")
    loaded = av.load_bigvgan(str(tmp_path / "best_netG.pt"))
    mel = torch.randn(1, 80, 6) - 2
    with torch.no_grad():
        assert torch.allclose(loaded(mel), ours(mel), atol=1e-6)


def test_a_file_that_is_not_the_codec_is_one_line(tmp_path):
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    for name, words in (("other.pth", "no tensor"), ("junk.pth", "cannot be read"), ("missing.pth", "no such file")):
        with pytest.raises(av.AudioCodecError) as err:
            av.load_mel_vae(str(tmp_path / name))
        assert words in str(err.value) and "\n" not in str(err.value)
