"""Ovi's audio codec: MMAudio's 16 kHz mel, its VAE and the BigVGAN vocoder, written from scratch.

Ovi's audio tower diffuses the latents of MMAudio's 16 kHz VAE (MMAudio, Cheng et al. 2025, "Taming Multimodal
Joint Training for High-Quality Video-to-Audio Synthesis"; Ovi's `FeaturesUtils`): a waveform becomes an 80-bin
log10 mel (hop 256: 62.5 frames/s), the VAE's encoder turns the mel into 20 channels at half the frame rate
(31.25 latents/s, 157 for 5 s), and Ovi keeps the posterior's mean. Back out, the VAE's decoder gives a mel and
BigVGAN (Lee et al. 2023), MMAudio's 16 kHz vocoder, the waveform. None of it is packaged, so it is written
here, one class per block, and the released weights (`v1-16.pth`, `best_netG.pt`) load through
`mmaudio_vae_key` and `bigvgan_state`, checked against MMAudio's own code on random weights (README).

    wave (B, S) --mel--> (B, 80, S/256) --VAE encoder--> mean (B, 20, S/512) --VAE decoder--> mel --BigVGAN--> wave

The VAE is EDM2-style (Karras et al. 2024): magnitude-preserving convolutions whose weights are normalised per
output channel, magnitude-preserving SiLU and sums, pixel norm in each residual block.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

SAMPLE_RATE, N_FFT, HOP, N_MELS, F_MAX = 16_000, 1024, 256, 80, 8_000   # MMAudio's get_mel_converter('16k')
LATENT_CHANNELS, HIDDEN = 20, 384                                        # VAE_16k: embed_dim, hidden_dim

# The VAE normalises each mel bin with these statistics of its training data (MMAudio's DATA_MEAN_80D and
# DATA_STD_80D; they are also buffers of the released state dict, which loading checks against).
MEL_MEAN = [
    -1.6058, -1.3676, -1.2520, -1.2453, -1.2078, -1.2224, -1.2419, -1.2439, -1.2922, -1.2927, -1.3170, -1.3543,
    -1.3401, -1.3836, -1.3907, -1.3912, -1.4313, -1.4152, -1.4527, -1.4728, -1.4568, -1.5101, -1.5051, -1.5172,
    -1.5623, -1.5373, -1.5746, -1.5687, -1.6032, -1.6131, -1.6081, -1.6331, -1.6489, -1.6489, -1.6700, -1.6738,
    -1.6953, -1.6969, -1.7048, -1.7280, -1.7361, -1.7495, -1.7658, -1.7814, -1.7889, -1.8064, -1.8221, -1.8377,
    -1.8417, -1.8643, -1.8857, -1.8929, -1.9173, -1.9379, -1.9531, -1.9673, -1.9824, -2.0042, -2.0215, -2.0436,
    -2.0766, -2.1064, -2.1418, -2.1855, -2.2319, -2.2767, -2.3161, -2.3572, -2.3954, -2.4282, -2.4659, -2.5072,
    -2.5552, -2.6074, -2.6584, -2.7107, -2.7634, -2.8266, -2.8981, -2.9673]
MEL_STD = [
    1.0291, 1.0411, 1.0043, 0.9820, 0.9677, 0.9543, 0.9450, 0.9392, 0.9343, 0.9297, 0.9276, 0.9263, 0.9242, 0.9254,
    0.9232, 0.9281, 0.9263, 0.9315, 0.9274, 0.9247, 0.9277, 0.9199, 0.9188, 0.9194, 0.9160, 0.9161, 0.9146, 0.9161,
    0.9100, 0.9095, 0.9145, 0.9076, 0.9066, 0.9095, 0.9032, 0.9043, 0.9038, 0.9011, 0.9019, 0.9010, 0.8984, 0.8983,
    0.8986, 0.8961, 0.8962, 0.8978, 0.8962, 0.8973, 0.8993, 0.8976, 0.8995, 0.9016, 0.8982, 0.8972, 0.8974, 0.8949,
    0.8940, 0.8947, 0.8936, 0.8939, 0.8951, 0.8956, 0.9017, 0.9167, 0.9436, 0.9690, 1.0003, 1.0225, 1.0381, 1.0491,
    1.0545, 1.0604, 1.0761, 1.0929, 1.1089, 1.1196, 1.1176, 1.1156, 1.1117, 1.1070]


class AudioCodecError(ValueError):
    """A weights file that is not the codec's (one line: which file, what is wrong)."""


# ------------------------------------------------------------------------------------------------
# The mel: what the VAE encodes and BigVGAN vocodes
# ------------------------------------------------------------------------------------------------


class LogMel(nn.Module):
    """MMAudio's MelConverter('16k'): |STFT| (n_fft 1024, hop 256, Hann 1024, no centring but a reflect pad of
    (n_fft - hop) / 2 each side, so S samples give S / 256 frames), 80 Slaney mel bands over 0-8 kHz (librosa's
    defaults, which torchaudio reproduces with norm and mel_scale "slaney"), log10 of the magnitude clamped at 1e-5."""

    def __init__(self):
        super().__init__()
        fbank = torchaudio.functional.melscale_fbanks(N_FFT // 2 + 1, 0.0, F_MAX, N_MELS, SAMPLE_RATE,
                                                      norm="slaney", mel_scale="slaney")   # (513, 80)
        self.register_buffer("mel_basis", fbank.T.contiguous(), persistent=False)         # (80, 513)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) waveform in [-1, 1] at 16 kHz -> (B, 80, S // 256) log10 mel."""
        pad = (N_FFT - HOP) // 2              # 384 each side: frame i is centred on sample 256 i + 128
        x = F.pad(wave.clamp(-1, 1).float().unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)  # (B, S + 768)
        spec = torch.stft(x, N_FFT, hop_length=HOP, win_length=N_FFT, window=self.window, center=False,
                          return_complex=True)                                              # (B, 513, frames)
        magnitude = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)   # the 1e-9 keeps silence's gradient finite
        # magnitude (not power) mel, log10, floored at 1e-5 (-5): MMAudio's dynamic_range_compression
        return torch.log10((self.mel_basis @ magnitude).clamp_min(1e-5))                # (B, 80, frames)


# ------------------------------------------------------------------------------------------------
# The VAE (MMAudio's VAE_16k): magnitude-preserving 1D convolutions over mel frames
# ------------------------------------------------------------------------------------------------


def pixel_norm(x: torch.Tensor, dim, eps: float = 1e-4) -> torch.Tensor:
    """EDM2's normalize: x scaled to unit root-mean-square over `dim` (eps added to the rms)."""
    rms = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)   # the norm over `dim`, in fp32
    rms = eps + rms * math.sqrt(rms.numel() / x.numel())   # norm / sqrt(n): n = the size reduced over
    return x / rms.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU divided by its output's std on unit-normal input (EDM2 eq. 81), so magnitudes stay ~1."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """(1 - t) a + t b, rescaled to unit magnitude for independent unit inputs (EDM2 eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


class MPConv(nn.Module):
    """A bias-free Conv1d whose stored weight is the trained one scaled to norm 1 per output channel (EDM2's
    forced weight normalisation: unit rms, divided by sqrt(fan-in); applied once at load: `normalised`), so
    unit-variance inputs give unit-variance outputs."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel))

    @staticmethod
    def normalised(raw: torch.Tensor) -> torch.Tensor:
        """What MMAudio's remove_weight_norm does to a trained (released) weight."""
        w = pixel_norm(raw.float(), dim=list(range(1, raw.ndim)))
        return (w / math.sqrt(w[0].numel())).to(raw.dtype)

    def forward(self, x: torch.Tensor, gain=1.0) -> torch.Tensor:
        w = self.weight * gain                                 # only the output convs pass a (learned) gain
        return F.conv1d(x, w, padding=w.shape[-1] // 2)        # "same" padding: (B, C_in, T) -> (B, C_out, T)


class ResBlock(nn.Module):
    """Pixel norm -> SiLU -> conv -> SiLU -> conv, added back with weight 0.3 (a 1x1 projection when widths differ)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1, self.conv2 = MPConv(c_in, c_out, 3), MPConv(c_out, c_out, 3)
        self.skip = MPConv(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(x, dim=1)                               # over channels, per frame
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))         # no norm between: EDM2 keeps magnitudes instead
        # the branch enters with weight 0.3 against the skip's 0.7, rescaled so the sum keeps unit magnitude
        return mp_sum(self.skip(x) if self.skip is not None else x, h, t=0.3)


class SelfAttention(nn.Module):
    """One-head attention over frames with cosine q, k, v (each normalised over channels), added back with 0.3."""

    def __init__(self, c: int):
        super().__init__()
        self.qkv, self.out = MPConv(c, 3 * c, 1), MPConv(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T = x.shape
        y = self.qkv(x).reshape(B, C, 3, T)                   # channel 3c + j is component j of channel c
        q, k, v = pixel_norm(y, dim=1).unbind(2)               # each (B, C, T), unit rms per frame: cosine logits
        h = F.scaled_dot_product_attention(q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None],
                                           v.transpose(1, 2)[:, None])                     # (B, 1, T, C)
        return mp_sum(x, self.out(h[:, 0].transpose(1, 2)), t=0.3)                        # (B, C, T)


class Downsample(nn.Module):
    """1x1 conv, average pool by 2 over frames, 1x1 conv: 62.5 mel frames/s -> 31.25 latents/s."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = MPConv(c, c, 1), MPConv(c, c, 1)

    def forward(self, x):
        return self.conv2(F.avg_pool1d(self.conv1(x), 2, 2))


class Upsample(nn.Module):
    """Nearest-neighbour x2 over frames, then a conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = MPConv(c, c, 3)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))


CLIP_ACT = 256.0  # activations are clamped to +-256 after every block (MMAudio's clip_act)


class Encoder(nn.Module):
    """mel (B, 80, T) -> moments (B, 40, T/2): widths 384, 768, 1536 with two ResBlocks each, the halving after the
    first level, a middle of ResBlock, attention, ResBlock, and a gained output conv."""

    def __init__(self, dim: int = HIDDEN, mults=(1, 2, 4)):
        super().__init__()
        self.conv_in = MPConv(N_MELS, dim, 3)
        widths = [dim] + [dim * m for m in mults]
        self.levels = nn.ModuleList(nn.ModuleList([ResBlock(widths[i], widths[i + 1]), ResBlock(widths[i + 1],
                                                   widths[i + 1])]) for i in range(len(mults)))
        self.down = Downsample(widths[1])                      # after level 0 only (down_layers=[0])
        c = widths[-1]
        self.mid = nn.ModuleList([ResBlock(c, c), SelfAttention(c), ResBlock(c, c)])
        self.conv_out = MPConv(c, 2 * LATENT_CHANNELS, 3)
        self.gain = nn.Parameter(torch.zeros([]))              # learned output gain, used as 1 + gain

    def forward(self, mel):
        h = self.conv_in(mel)                                  # (B, 384, T)
        for i, level in enumerate(self.levels):                # widths 384 -> 384 -> 768 -> 1536
            for block in level:
                h = block(h).clamp(-CLIP_ACT, CLIP_ACT)
            if i == 0:
                h = self.down(h)                               # (B, 384, T/2): the only change of rate
        for block in self.mid:                                 # no clamp between the middle's three blocks
            h = block(h)
        # (B, 1536, T/2) -> (B, 40, T/2): 20 means, then 20 log-variances
        return self.conv_out(mp_silu(h.clamp(-CLIP_ACT, CLIP_ACT)), gain=self.gain + 1)


class Decoder(nn.Module):
    """latents (B, 20, T/2) -> mel (B, 80, T): the encoder mirrored, three ResBlocks a level, the doubling after
    the middle level."""

    def __init__(self, dim: int = HIDDEN, mults=(1, 2, 4)):
        super().__init__()
        c = dim * mults[-1]
        self.conv_in = MPConv(LATENT_CHANNELS, c, 3)
        self.mid = nn.ModuleList([ResBlock(c, c), SelfAttention(c), ResBlock(c, c)])
        self.levels = nn.ModuleList()                          # deepest first, as they run
        for m in reversed(mults):
            self.levels.append(nn.ModuleList([ResBlock(c, dim * m)] + [ResBlock(dim * m, dim * m) for _ in range(2)]))
            c = dim * m
        self.up = Upsample(dim * mults[1])                     # after the middle level (MMAudio's down_layers + 1)
        self.conv_out = MPConv(c, N_MELS, 3)
        self.gain = nn.Parameter(torch.zeros([]))

    def forward(self, z):
        h = self.conv_in(z)                                    # (B, 1536, T/2)
        for block in self.mid:
            h = block(h)
        h = h.clamp(-CLIP_ACT, CLIP_ACT)
        for i, level in enumerate(self.levels):                # widths 1536 -> 768 -> 384
            for block in level:
                h = block(h).clamp(-CLIP_ACT, CLIP_ACT)
            if i == 1:
                h = self.up(h)                                 # (B, 768, T): back to the mel's frame rate
        return self.conv_out(mp_silu(h), gain=self.gain + 1)  # (B, 80, T), still normalised (MelVAE undoes it)


class MelVAE(nn.Module):
    """MMAudio's VAE_16k. encode: log10 mel -> the posterior's mean (Ovi's latents); decode: latents -> mel."""

    def __init__(self, dim: int = HIDDEN):
        super().__init__()
        self.register_buffer("mel_mean", torch.tensor(MEL_MEAN).view(1, -1, 1))
        self.register_buffer("mel_std", torch.tensor(MEL_STD).view(1, -1, 1))
        self.encoder, self.decoder = Encoder(dim), Decoder(dim)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 80, T) -> (B, 20, T/2): the mean of the diagonal Gaussian (Ovi's wrapped_encode returns dist.mean)."""
        moments = self.encoder((mel - self.mel_mean) / self.mel_std)   # each bin standardised by its data statistics
        return moments[:, :LATENT_CHANNELS]                    # the second half is the log-variance

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) * self.mel_std + self.mel_mean


# ------------------------------------------------------------------------------------------------
# BigVGAN (v1, MMAudio's 16 kHz vocoder): mel -> waveform, x256 by transposed convolutions
# ------------------------------------------------------------------------------------------------

UPSAMPLE = ((4, 8), (4, 8), (2, 4), (2, 4), (2, 4), (2, 4))   # (rate, kernel) per stage: 4*4*2*2*2*2 = 256 = hop
RES_KERNELS, RES_DILATIONS, BIGVGAN_WIDTH = (3, 7, 11), (1, 3, 5), 1536


def kaiser_sinc_filter(cutoff: float, half_width: float, size: int) -> torch.Tensor:
    """A windowed-sinc low-pass filter of even length `size` (BigVGAN's alias-free resampling), shape (1, 1, size)."""
    half = size // 2
    attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95       # Kaiser's formula, in dB
    beta = 0.1102 * (attenuation - 8.7) if attenuation > 50 else \
        0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21) if attenuation >= 21 else 0.0
    window = torch.kaiser_window(size, periodic=False, beta=beta)
    time = torch.arange(-half, half) + 0.5                    # even length: taps sit between samples
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (taps / taps.sum()).view(1, 1, size)


class SnakeBeta(nn.Module):
    """x + 1/beta sin^2(alpha x), per channel, alpha and beta stored as logs (BigVGAN's periodic activation)."""

    def __init__(self, c: int):
        super().__init__()
        self.alpha, self.beta = nn.Parameter(torch.zeros(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):                                      # (B, C, T)
        alpha, beta = self.alpha.exp()[:, None], self.beta.exp()[:, None]   # (C, 1): frequency, inverse magnitude
        return x + torch.sin(x * alpha) ** 2 / (beta + 1e-9)   # periodic bumps on the identity: good at pitch


class AliasFreeSnake(nn.Module):
    """Upsample x2, SnakeBeta, low-pass and downsample x2: the activation's harmonics do not alias."""

    def __init__(self, c: int, size: int = 12):
        super().__init__()
        self.act = SnakeBeta(c)
        self.register_buffer("filter", kaiser_sinc_filter(0.25, 0.3, size), persistent=False)
        self.size = size

    def forward(self, x):                                      # (B, C, T) -> (B, C, T)
        C, k = x.shape[1], self.size
        f = self.filter.expand(C, -1, -1)                      # the same low-pass for every channel (groups=C)
        pad = k // 2 - 1                                       # upsample: replicate pad, zero-stuff, filter, trim
        # x2 because zero-stuffing halves the mean; the transposed conv interpolates between samples
        up = 2 * F.conv_transpose1d(F.pad(x, (pad, pad), mode="replicate"), f, stride=2, groups=C)
        trim = pad * 2 + (k - 2) // 2                          # the padding's share at twice the rate, each side
        up = up[..., trim: -(pad * 2 + (k - 1) // 2)]          # (B, C, 2T)
        y = self.act(up)                                       # the nonlinearity at twice the rate
        y = F.pad(y, (k // 2 - 1, k // 2), mode="replicate")  # downsample: filter, keep every second sample
        return F.conv1d(y, f, stride=2, groups=C)              # (B, C, T)


class AMPBlock(nn.Module):
    """Three (activation, dilated conv, activation, conv) residual steps: BigVGAN's AMP block, type 1."""

    def __init__(self, c: int, kernel: int):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(c, c, kernel, dilation=d, padding=d * (kernel - 1) // 2)
                                    for d in RES_DILATIONS)
        self.convs2 = nn.ModuleList(nn.Conv1d(c, c, kernel, padding=(kernel - 1) // 2) for _ in RES_DILATIONS)
        self.acts = nn.ModuleList(AliasFreeSnake(c) for _ in range(2 * len(RES_DILATIONS)))

    def forward(self, x):
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):   # dilations 1, 3, 5: widening receptive fields
            x = x + c2(self.acts[2 * i + 1](c1(self.acts[2 * i](x))))
        return x


class BigVGAN(nn.Module):
    """mel (B, 80, T) -> waveform (B, T * 256) in [-1, 1]: six upsampling stages, each followed by the mean of three
    AMP blocks (kernels 3, 7, 11), then an activation, a conv to one channel and tanh."""

    def __init__(self, width: int = BIGVGAN_WIDTH):
        super().__init__()
        if width % 2 ** len(UPSAMPLE):  # each stage halves the channels: 1536 -> 24
            raise AudioCodecError(f"BigVGAN's width {width} must divide by {2 ** len(UPSAMPLE)}")
        self.conv_pre = nn.Conv1d(N_MELS, width, 7, padding=3)
        self.ups, self.blocks = nn.ModuleList(), nn.ModuleList()
        for i, (rate, kernel) in enumerate(UPSAMPLE):
            c_in, c_out = width // 2 ** i, width // 2 ** (i + 1)
            # kernel = 2 x rate, padding (kernel - rate) / 2: exactly `rate` output samples per input sample
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2))
            self.blocks.append(nn.ModuleList(AMPBlock(c_out, k) for k in RES_KERNELS))
        self.act_post = AliasFreeSnake(c_out)
        self.conv_post = nn.Conv1d(c_out, 1, 7, padding=3)

    def forward(self, mel):
        x = self.conv_pre(mel)                                 # (B, 1536, T)
        for up, blocks in zip(self.ups, self.blocks):
            x = up(x)                                          # (B, C / 2, T * rate)
            x = sum(block(x) for block in blocks) / len(blocks)   # three receptive fields, averaged (MRF)
        return torch.tanh(self.conv_post(self.act_post(x))).squeeze(1)                  # (B, samples)


# ------------------------------------------------------------------------------------------------
# The released weights: key maps
# ------------------------------------------------------------------------------------------------


def mmaudio_vae_key(name: str) -> str:
    """Our MelVAE's parameter name -> the key in MMAudio's v1-16.pth. Differences: levels are `down`/`up`
    (the decoder's indexed by level, shallowest first, while ours run deepest first), the middle is
    `mid.block_1, attn_1, block_2`, skips are `nin_shortcut`, attention's output is `proj_out`, gains are
    `learnable_gain`, the mel statistics are `data_mean`/`data_std`."""
    parts = name.split(".")
    if parts[0] in ("mel_mean", "mel_std"):
        return {"mel_mean": "data_mean", "mel_std": "data_std"}[parts[0]]
    side, rest = parts[0], parts[1:]
    if rest[0] == "levels":                                    # levels.i.j.* -> down.i.block.j.* / up.(2-i).block.j.*
        level = int(rest[1]) if side == "encoder" else 2 - int(rest[1])
        rest = ["down" if side == "encoder" else "up", str(level), "block"] + rest[2:]
    elif rest[0] == "mid":                                     # mid.0/1/2 -> mid.block_1 / attn_1 / block_2
        rest = ["mid", ("block_1", "attn_1", "block_2")[int(rest[1])]] + rest[2:]
    elif rest[0] in ("down", "up"):                            # the one resampler: at level 0 (down), 1 (up)
        rest = [rest[0], "0" if rest[0] == "down" else "1", "downsample" if rest[0] == "down" else "upsample"] + rest[1:]
    elif rest[0] == "gain":
        rest = ["learnable_gain"]
    rename = {"skip": "nin_shortcut", "out": "proj_out"}
    return ".".join([side] + [rename.get(p, p) for p in rest])


def load_mel_vae(path: str, device="cpu") -> MelVAE:
    """MMAudio's v1-16.pth -> MelVAE, every MPConv weight normalised as at MMAudio's load. A key missing or a
    shape that differs stops with one line. The width is read from the file (384 released; tests save narrower)."""
    state = read_state(path)
    if "encoder.conv_in.weight" not in state:  # before building 172M parameters for nothing
        raise AudioCodecError(f"{path}: no tensor encoder.conv_in.weight; is this MMAudio's 16 kHz VAE (v1-16.pth)?")
    vae = MelVAE(state["encoder.conv_in.weight"].shape[0])
    ours = {}
    for name, param in vae.state_dict().items():
        key = mmaudio_vae_key(name)
        if key not in state:
            raise AudioCodecError(f"{path}: no tensor {key} (for {name}); is this MMAudio's 16 kHz VAE (v1-16.pth)?")
        value = state[key].reshape(param.shape) if key.startswith("data_") else state[key]
        if value.shape != param.shape:
            raise AudioCodecError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
        ours[name] = MPConv.normalised(value) if name.endswith("weight") else value
    vae.load_state_dict(ours)
    return vae.to(device).eval()


def bigvgan_key(name: str) -> str:
    """Our BigVGAN's parameter name -> the released generator's (before weight norm is folded): the upsamplers
    are `ups.i.0`, the AMP blocks one flat list `resblocks.(3 i + j)`, activations `activations.k.act` and
    `activation_post.act`."""
    parts = name.split(".")
    if parts[0] == "ups":
        return ".".join(["ups", parts[1], "0"] + parts[2:])
    if parts[0] == "blocks":                                   # blocks.i.j.* -> resblocks.(3 i + j).*
        rest = ["activations" if p == "acts" else p for p in parts[3:]]
        return ".".join(["resblocks", str(3 * int(parts[1]) + int(parts[2]))] + rest)
    if parts[0] == "act_post":
        return ".".join(["activation_post", "act"] + parts[2:])
    return name


def fold_weight_norm(state: dict, key: str):
    """A weight stored whole, or as weight norm's direction v and magnitude g (either torch's old weight_g /
    weight_v or its parametrizations' original0 / original1): w = g v / |v|, the norm over all but dim 0."""
    if key in state:
        return state[key]
    base = key[: -len(".weight")]
    for g_key, v_key in ((f"{base}.weight_g", f"{base}.weight_v"),
                         (f"{base}.parametrizations.weight.original0", f"{base}.parametrizations.weight.original1")):
        if g_key in state and v_key in state:
            v = state[v_key]
            return state[g_key] * v / torch.linalg.vector_norm(v, dim=list(range(1, v.ndim)), keepdim=True)
    return None


def load_bigvgan(path: str, device="cpu") -> BigVGAN:
    """MMAudio's best_netG.pt (its 'generator' entry) -> BigVGAN, weight norm folded into plain weights. The
    width is read from the file (1536 released)."""
    state = read_state(path)
    state = state.get("generator", state)
    bias = state.get("conv_pre.bias")
    net = BigVGAN(bias.shape[0] if bias is not None else BIGVGAN_WIDTH)
    ours = {}
    for name, param in net.state_dict().items():
        key = bigvgan_key(name)
        value = fold_weight_norm(state, key) if name.endswith("weight") else state.get(key)
        if value is None or value.shape != param.shape:
            found = "missing" if value is None else f"shape {tuple(value.shape)}"
            raise AudioCodecError(f"{path}: {key} is {found}, expected {tuple(param.shape)}; is this MMAudio's "
                                  f"16 kHz BigVGAN (best_netG.pt)?")
        ours[name] = value
    net.load_state_dict(ours)
    return net.to(device).eval()


def read_state(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AudioCodecError(f"{path}: no such file") from None
    except Exception as e:  # a truncated or foreign file: one line, not an unpickling traceback
        raise AudioCodecError(f"{path}: cannot be read as a torch state dict ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise AudioCodecError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    return state


# ------------------------------------------------------------------------------------------------
# The codec as Ovi uses it
# ------------------------------------------------------------------------------------------------


class AudioCodec(nn.Module):
    """waveform <-> Ovi's audio latents (B, T_a, 20), as `shards.py` stores them (frames first)."""

    def __init__(self, vae: MelVAE, vocoder: BigVGAN | None = None):
        super().__init__()
        self.mel, self.vae, self.vocoder = LogMel(), vae, vocoder

    @classmethod
    def load(cls, vae_path: str, vocoder_path: str | None = None, device="cpu") -> "AudioCodec":
        vocoder = load_bigvgan(vocoder_path, device) if vocoder_path else None
        return cls(load_mel_vae(vae_path, device), vocoder).to(device).eval()

    @torch.no_grad()
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, S) at 16 kHz -> (B, S // 512, 20), on the CPU (where shards are assembled)."""
        wave = wave.to(self.mel.window.device)
        return self.vae.encode(self.mel(wave)).transpose(1, 2).cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T_a, 20) -> (B, T_a * 512) waveform at 16 kHz, on the CPU."""
        if self.vocoder is None:
            raise AudioCodecError("decoding audio needs the vocoder: give MMAudio's best_netG.pt")
        z = latents.to(self.mel.window.device, torch.float32).transpose(1, 2)
        return self.vocoder(self.vae.decode(z)).cpu()


# ------------------------------------------------------------------------------------------------
# Side by side with MMAudio's own code (a one-off check; MMAudio is not a dependency)
# ------------------------------------------------------------------------------------------------


def against_mmaudio(mmaudio_dir: str) -> dict:
    """Our VAE and vocoder against MMAudio's modules (imported from a checkout of its repository; they need
    einops) on the same random weights, saved in the released files' layout. Returns the max |difference|."""
    import sys
    import tempfile
    import types
    sys.path.insert(0, mmaudio_dir)
    from mmaudio.ext.autoencoder.vae import VAE_16k
    from mmaudio.ext.bigvgan.models import BigVGANVocoder
    out, tmp = {}, tempfile.mkdtemp()
    torch.manual_seed(0)
    ref = VAE_16k().eval()
    with torch.no_grad():  # non-zero gains, so the gain path is exercised
        ref.encoder.learnable_gain.fill_(0.3)
        ref.decoder.learnable_gain.fill_(-0.2)
    torch.save(ref.state_dict(), f"{tmp}/v1-16.pth")          # as released: weights before normalisation
    ours = load_mel_vae(f"{tmp}/v1-16.pth")
    ref.remove_weight_norm()
    mel, z = torch.randn(2, 80, 250) - 1.5, torch.randn(2, 20, 125)
    with torch.no_grad():
        out["vae_encode"] = (ref.encode(mel).mean - ours.encode(mel)).abs().max().item()
        out["vae_decode"] = (ref.decode(z) - ours.decode(z)).abs().max().item()
    h = types.SimpleNamespace(resblock="1", num_mels=N_MELS, upsample_rates=[r for r, _ in UPSAMPLE],
                              upsample_kernel_sizes=[k for _, k in UPSAMPLE], upsample_initial_channel=BIGVGAN_WIDTH,
                              resblock_kernel_sizes=list(RES_KERNELS), resblock_dilation_sizes=[list(RES_DILATIONS)] * 3,
                              activation="snakebeta", snake_logscale=True)
    voc = BigVGANVocoder(h).eval()
    with torch.no_grad():
        for name, p in voc.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.normal_(0, 0.3)
    torch.save({"generator": voc.state_dict()}, f"{tmp}/best_netG.pt")  # weight norm still on, as released
    mine = load_bigvgan(f"{tmp}/best_netG.pt")
    voc.remove_weight_norm()
    m = torch.randn(1, N_MELS, 20) - 2
    with torch.no_grad():
        out["bigvgan"] = (voc(m).squeeze(1) - mine(m)).abs().max().item()
    return out


def main():
    from cli import OneLineParser
    parser = OneLineParser(description="Ovi's audio codec (MMAudio's 16 kHz VAE and BigVGAN): check it against "
                                       "MMAudio's code, or round-trip a wav through released weights.")
    parser.add_argument("--against_mmaudio", help="a checkout of MMAudio's repository: compare on random weights")
    parser.add_argument("--vae", help="MMAudio's ext_weights/v1-16.pth")
    parser.add_argument("--vocoder", help="MMAudio's ext_weights/best_netG.pt")
    parser.add_argument("--wav", help="--vae/--vocoder: a wav to encode and decode")
    parser.add_argument("--out", default="out/roundtrip.wav", help="--wav: where the decoded audio goes")
    args = parser.parse_args()
    if args.against_mmaudio:
        for part, diff in against_mmaudio(args.against_mmaudio).items():
            print(f"{part:12s} max |ours - MMAudio's| = {diff:.2e}")
        return
    if not (args.vae and args.vocoder and args.wav):
        parser.exit(2, "error: give --against_mmaudio DIR, or --vae, --vocoder and --wav\n")
    import inputs
    import speech
    codec = AudioCodec.load(args.vae, args.vocoder)
    wave = inputs.load_wav(args.wav, SAMPLE_RATE, flag="--wav")[None]
    latents = codec.encode(wave)
    speech.save_wav(args.out, codec.decode(latents)[0], SAMPLE_RATE)
    print(f"{args.wav}: {wave.shape[1] / SAMPLE_RATE:.2f} s -> latents {tuple(latents.shape[1:])} -> {args.out}")


if __name__ == "__main__":
    main()
