"""The real encoders: what turns a user's footage into Ovi's latents (prepare.py) and Ovi's latents back into
footage (sample.py). They are Ovi's own, loaded from files the user gives; nothing is downloaded.

  video  Wan2.2's VAE through diffusers' AutoencoderKLWan (a local folder in diffusers' layout): RGB frames
         -> 48 channels per 4 x 16 x 16 pixels (121 frames -> 31 latent frames), the posterior's mean, each
         channel normalised with the mean and std Wan2.2 ships in the VAE's config, as Ovi's Wan2_2_VAE does:
         z = (mu - mean) / std, and back z * std + mean before decoding.
  audio  MMAudio's 16 kHz VAE and BigVGAN vocoder (audio_vae.py, written here): 157 latents of 20 channels
         for 5 s, the posterior's mean, not normalised further (Ovi's FeaturesUtils.wrapped_encode).
  text   umT5-XXL through transformers' UMT5EncoderModel and its tokenizer (a local folder): Ovi's prompt
         format -- whitespace collapsed, an end-of-sequence token, 512 positions, features zeroed past the
         prompt's tokens (Ovi trims them to the prompt's length and its model pads with zeros).

These packages are optional (requirements-real.txt): the toy never imports this file. The tests run it end to
end with tiny random-initialised encoders of the same classes (tests/test_real_clips.py).
"""
from __future__ import annotations

import importlib
import os
import re

import torch

import audio_vae

FPS, CLIP_FRAMES = 24, 121                  # Ovi's 5 s clip: 121 frames at 24 fps (31 latent frames)
SAMPLE_RATE, AUDIO_LATENTS = audio_vae.SAMPLE_RATE, 157
AUDIO_SAMPLES = AUDIO_LATENTS * 2 * audio_vae.HOP      # 80,384 samples (5.024 s) encode to exactly 157 latents
TEXT_LEN = 512                              # umT5 positions Ovi gives its prompt


class EncoderError(ValueError):
    """A missing package or an unusable encoder folder/file: one line naming it and what to do."""


def need(package: str):
    """Import an optional package, or stop with the one command that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise EncoderError(f"the real-footage path needs `{package}`: pip install -r requirements-real.txt") from None


def existing(path: str, flag: str, folder: bool = False) -> str:
    if not path:
        raise EncoderError(f"give {flag}")
    if not (os.path.isdir(path) if folder else os.path.isfile(path)):
        raise EncoderError(f"{flag} {path}: no such {'folder' if folder else 'file'}")
    return path


class VideoVAE:
    """Wan2.2's VAE: frames (B, T, 3, H, W) in [0, 1] <-> normalised latents (B, T', 48, H/16, W/16), frames first
    as shards.py stores them (diffusers works channels first: (B, C, T, H, W))."""

    def __init__(self, folder: str, device="cpu", dtype=torch.float32):
        diffusers = need("diffusers")
        existing(folder, "--video_vae", folder=True)
        try:
            self.vae = diffusers.AutoencoderKLWan.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
        except (OSError, ValueError) as e:  # no config.json, no weights, a config of another class
            raise EncoderError(f"--video_vae {folder}: not a diffusers AutoencoderKLWan folder ({str(e).splitlines()[0]})") from None
        cfg = self.vae.config
        self.mean = torch.tensor(cfg.latents_mean, device=device).view(1, 1, -1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, device=device).view(1, 1, -1, 1, 1)
        self.channels, self.spatial, self.temporal = cfg.z_dim, cfg.scale_factor_spatial, cfg.scale_factor_temporal
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        # Wan's VAE is causal in time: frame 0 alone makes latent frame 0, then each 4 frames one more
        x = (frames.to(self.device, self.dtype) * 2 - 1).permute(0, 2, 1, 3, 4)        # (B, 3, T, H, W) in [-1, 1]
        mu = self.vae.encode(x).latent_dist.mean.permute(0, 2, 1, 3, 4).float()       # (B, T', C, h, w)
        return ((mu - self.mean) / self.std).cpu()                                    # shards live on the CPU

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        # undo Ovi's normalisation first: the decoder was trained on the VAE's raw latents
        z = (latents.to(self.device).float() * self.std + self.mean).permute(0, 2, 1, 3, 4)  # (B, C, T', h, w)
        x = self.vae.decode(z.to(self.dtype)).sample.float()                                # (B, 3, T, H, W)
        return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4)

    def latent_frames(self, frames: int) -> int:
        """Wan's causal grid: the first frame alone, then one latent per 4 frames (121 -> 31)."""
        return 1 + (frames - 1) // self.temporal


def clean_prompt(text: str) -> str:
    """Ovi's tokenizer cleaning ('whitespace'): runs of whitespace become one space, ends stripped."""
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder:
    """umT5-XXL: prompts -> features (B, 512, D) zeroed past each prompt's tokens, and the mask of real tokens."""

    def __init__(self, folder: str, device="cpu", dtype=torch.float32):
        transformers = need("transformers")
        existing(folder, "--text_encoder", folder=True)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            self.model = transformers.UMT5EncoderModel.from_pretrained(folder, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as e:
            raise EncoderError(f"--text_encoder {folder}: not a transformers umT5 folder with its tokenizer "
                               f"({str(e).splitlines()[0]})") from None
        if not self.tokenizer.is_fast:  # spans need character offsets, which only fast tokenizers give
            raise EncoderError(f"--text_encoder {folder}: its tokenizer has no fast (tokenizer.json) version")
        self.dim, self.device = self.model.config.d_model, device

    def tokens(self, text: str) -> dict:
        """The prompt as Ovi tokenizes it: ids, mask and each token's character span in clean_prompt(text)."""
        # pad to 512 as Ovi does; a prompt past 512 tokens is cut, and token_spans says so if a span is lost
        return self.tokenizer([clean_prompt(text)], padding="max_length", truncation=True, max_length=TEXT_LEN,
                              return_offsets_mapping=True, return_tensors="pt")

    @torch.no_grad()
    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (512, D) in fp32, zero past the prompt; mask (512,) True on real tokens)."""
        tok = self.tokens(text)
        mask = tok["attention_mask"].to(self.device)
        feats = self.model(input_ids=tok["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
        # (1, 512, D): Ovi keeps u[:seq_len] and its model zero-pads to 512; zeroing here stores the same thing
        return (feats.float() * mask[..., None]).cpu()[0], mask.bool().cpu()[0]

    def token_spans(self, text: str, char_spans: list) -> list:
        """Character spans [a, b) of clean_prompt(text) -> token spans [start, end): the tokens overlapping them."""
        offsets = self.tokens(text)["offset_mapping"][0].tolist()
        real = [(i, a, b) for i, (a, b) in enumerate(offsets) if b > a]   # padding and </s> have empty offsets
        spans = []
        for a, b in char_spans:
            inside = [i for i, s, e in real if s < b and e > a]   # every token that overlaps the span
            if not inside:
                raise EncoderError(f"the caption's span {clean_prompt(text)[a:b]!r} fell beyond umT5's {TEXT_LEN} "
                                   "tokens: shorten the caption")
            spans.append((inside[0], inside[-1] + 1))
        return spans


class Encoders:
    """The four real encoders together, each loaded only if its file or folder is given."""

    def __init__(self, video_vae: str = "", text_encoder: str = "", audio_vae_path: str = "", vocoder: str = "",
                 device="cpu", dtype=torch.float32):
        self.video = VideoVAE(video_vae, device, dtype) if video_vae else None
        self.text = TextEncoder(text_encoder, device, dtype) if text_encoder else None
        self.audio = None
        if audio_vae_path:
            try:
                self.audio = audio_vae.AudioCodec.load(existing(audio_vae_path, "--audio_vae"),
                                                       existing(vocoder, "--vocoder") if vocoder else None, device)
            except audio_vae.AudioCodecError as e:
                raise EncoderError(str(e)) from None

    def require(self, *names: str):
        flags = dict(video="--video_vae", text="--text_encoder", audio="--audio_vae")
        missing = [flags[n] for n in names if getattr(self, n) is None]
        if missing:
            raise EncoderError(f"this needs {', '.join(missing)} (the encoders' files; README: Bring your own clips)")
