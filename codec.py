"""The toy's latent codecs: the small stand-ins for Wan2.2's video VAE and MMAudio's audio VAE.

Ovi does not diffuse pixels and mel bins. Its video tower reads Wan2.2 VAE latents (48 channels per 4x16x16
pixels), its audio tower MMAudio VAE latents, each normalised per channel; the VAEs' decoders turn a sample
back into frames and sound. A DiT asked to emit 192 exact pixel values per token (4 frames x 4 x 4 RGB) spends
its width on reproducing them and averages what it is unsure of into blocks and blur; over a compact latent it
only has to choose *which* patch, and the decoder draws it. This file gives the toy the same seam:

  video   every 4 frames x 4 x 4 pixels (192 numbers) -> 16 latent channels: (B, T, 3, H, W) ->
          (B, T/4, 16, H/4, W/4), the shard format's (N, T, C_v, H, W). A reference portrait is encoded as a
          still clip of 4 frames: one latent frame per reference image, as Ovi's references are.
  audio   every 2 log-mel frames (2 x 40 numbers) -> 16 latent channels: (B, T_mel, 40) -> (B, T_mel/2, 16)

Each codec is an autoencoder over one patch: an MLP encoder and decoder (a patch of the toy's cartoon world
holds a few flat colours and an edge or two, which 16 numbers describe). We chose per-patch MLPs over the
convolutional VAEs of the real codecs because they train in a minute on a 2-core CPU (on held-out clips a
3D-convolutional autoencoder reached 20 dB PSNR after two minutes, the MLPs 28-29 dB in 100 s); the price is
that a patch is decoded from its own latent alone, so a wrong latent shows as a wrong 4x4 block rather than
a smeared one.

Latent regularisation: the encoder's output gets a little Gaussian noise during training (a decoder that
tolerates small latent errors is one a diffusion sample can use), and a small L2 penalty keeps the scale
bounded (the role of the VAE's KL term). After training, latents are normalised per channel with the mean and
std over the training clips, as Ovi normalises Wan2.2's ((z - mean) / std, shards.py), so the flow sees unit-
scale targets. `ToyCodec.encode_batch` turns a whole toy batch (video, references, task inputs, boxes, the
in-pair reference positions) into the latent batch the model trains on; `decode_video` and `decode_audio`
turn a sample back.

`python codec.py --out codec.pt` trains both codecs and prints their held-out round-trip errors; train.py
does the same on first use (--codec) and caches the file.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class CodecConfig:
    video_patch: tuple = (4, 4, 4)  # frames, height, width of pixels per video latent (Wan2.2: 4 x 16 x 16)
    video_channels: int = 16        # latent channels per video patch (Wan2.2: 48)
    audio_patch: int = 2            # mel frames per audio latent
    audio_channels: int = 16        # latent channels per audio latent (MMAudio: 20)
    hidden: int = 512               # width of every encoder / decoder MLP
    latent_noise: float = 0.03      # std of the training noise on latents, relative to their own std
    l2: float = 1e-4                # weight of the latent L2 penalty (the KL term's role)
    clips: int = 600                # toy clips made for training (they also give the normalisation statistics)
    video_seconds: float = 100.0    # training time of the video codec on this CPU
    audio_seconds: float = 40.0     # training time of the audio codec
    max_steps: int = 0              # stop each codec after this many steps too (0 = by time only; tests use it)
    batch: int = 1024               # patches per optimizer step
    lr: float = 2e-3
    seed: int = 0


def mlp(sizes: list[int]) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class PatchCodec(nn.Module):
    """An autoencoder over one patch of `patch_dim` numbers -> `channels` normalised latent numbers."""

    def __init__(self, patch_dim: int, channels: int, hidden: int):
        super().__init__()
        self.encoder = mlp([patch_dim, hidden, hidden, channels])
        self.decoder = mlp([channels, hidden, hidden, hidden, patch_dim])  # the decoder draws: one layer more
        self.register_buffer("mean", torch.zeros(channels))  # per-channel statistics of training latents
        self.register_buffer("std", torch.ones(channels))

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """(..., patch_dim) -> (..., channels), normalised: (z - mean) / std."""
        return (self.encoder(patches) - self.mean) / self.std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents * self.std + self.mean)

    def fit(self, patches: torch.Tensor, cfg: CodecConfig, seconds: float, gen: torch.Generator, log=print):
        """Train on rows of `patches` (N, patch_dim) for `seconds` of wall time, then set the statistics.
        Loss: L1 + MSE of the reconstruction (L1 keeps flat colours flat; MSE punishes the rare big error)."""
        opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr)
        start, step = time.time(), 0
        while time.time() - start < seconds and not (cfg.max_steps and step >= cfg.max_steps):
            x = patches[torch.randint(len(patches), (cfg.batch,), generator=gen)]
            z = self.encoder(x)
            noise = torch.randn(z.shape, generator=gen) * cfg.latent_noise * z.detach().std(0)
            rec = self.decoder(z + noise)
            loss = (rec - x).abs().mean() + F.mse_loss(rec, x) + cfg.l2 * z.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        log(f"  {step} steps in {time.time() - start:.0f} s, last loss {loss.item():.4f}")
        with torch.no_grad():
            z = torch.cat([self.encoder(c) for c in patches.split(65536)])
            self.mean.copy_(z.mean(0))
            self.std.copy_(z.std(0).clamp_min(1e-4))


# ------------------------------------------------------------------------------------------------
# Patching: pixels and mel frames <-> rows of patch numbers
# ------------------------------------------------------------------------------------------------


def video_patches(video: torch.Tensor, patch: tuple) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, T/pt, H/ph, W/pw, pt*3*ph*pw)."""
    pt, ph, pw = patch
    B, T, C, H, W = video.shape
    x = video.reshape(B, T // pt, pt, C, H // ph, ph, W // pw, pw)
    return x.permute(0, 1, 4, 6, 2, 3, 5, 7).reshape(B, T // pt, H // ph, W // pw, pt * C * ph * pw)


def video_from_patches(rows: torch.Tensor, patch: tuple) -> torch.Tensor:
    """The inverse of video_patches: (B, t, h, w, pt*3*ph*pw) -> (B, t*pt, 3, h*ph, w*pw)."""
    pt, ph, pw = patch
    B, t, h, w, _ = rows.shape
    x = rows.reshape(B, t, h, w, pt, 3, ph, pw)
    return x.permute(0, 1, 4, 5, 2, 6, 3, 7).reshape(B, t * pt, 3, h * ph, w * pw)


def latent_frames(x: torch.Tensor, pt: int) -> torch.Tensor:
    """Per-frame motion conditions (B, K, T, ...) -> one per latent frame (B, K, T/pt, ...): each block of pt frames
    takes its first frame's box or points, as motion.py reads a temporal patch's first frame."""
    return x[:, :, ::pt]


class ToyCodec(nn.Module):
    """The video and audio codecs together, with the batch-level conversions the training loop needs."""

    def __init__(self, cfg: CodecConfig, n_mels: int):
        super().__init__()
        self.cfg, self.n_mels = cfg, n_mels
        pt, ph, pw = cfg.video_patch
        self.video = PatchCodec(pt * 3 * ph * pw, cfg.video_channels, cfg.hidden)
        self.audio = PatchCodec(cfg.audio_patch * n_mels, cfg.audio_channels, cfg.hidden)

    # --- video ---
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) pixels in [-1, 1] -> (B, T/pt, C_v, H/ph, W/pw) latents."""
        return self.video.encode(video_patches(video, self.cfg.video_patch)).permute(0, 1, 4, 2, 3)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, t, C_v, h, w) -> (B, t*pt, 3, h*ph, w*pw) pixels, clamped to [-1, 1]."""
        rows = self.video.decode(latents.permute(0, 1, 3, 4, 2))                     # (B, t, h, w, patch)
        return video_from_patches(rows, self.cfg.video_patch).clamp(-1, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Reference portraits (B, K, 3, h, w) -> one latent frame each (B, K, C_v, h/ph, w/pw): the image is
        encoded as a still clip of pt frames."""
        B, K = images.shape[:2]
        still = images.flatten(0, 1)[:, None].expand(-1, self.cfg.video_patch[0], -1, -1, -1)  # (B*K, pt, 3, h, w)
        return self.encode_video(still)[:, 0].unflatten(0, (B, K))

    # --- audio ---
    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """(..., T_mel, n_mels) -> (..., T_mel/pa, C_a)."""
        pa = self.cfg.audio_patch
        return self.audio.encode(mel.reshape(*mel.shape[:-2], mel.shape[-2] // pa, pa * self.n_mels))

    def decode_audio(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., T_a, C_a) -> (..., T_a*pa, n_mels) normalised log-mel."""
        rows = self.audio.decode(latents)
        return rows.reshape(*latents.shape[:-2], latents.shape[-2] * self.cfg.audio_patch, self.n_mels)

    def pool_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """RV2AV's pixel mask (B, T, 1, H, W) -> the latent grid (B, t, 1, h, w): a latent is regenerated if any
        of its pixels is."""
        return F.max_pool3d(mask.transpose(1, 2), self.cfg.video_patch).transpose(1, 2)

    # --- whole batches ---
    @torch.no_grad()
    def encode_batch(self, batch: dict) -> dict:
        """A toy batch (pixels, mel) -> the same batch over latents, every field that is laid out on the pixel
        or mel grid moved onto the latent grid (the shard format's layout, shards.py)."""
        pt, ph, pw = self.cfg.video_patch
        pa = self.cfg.audio_patch
        out = dict(batch)
        out["audio"] = self.encode_audio(batch["audio"])                          # (B, T_a, C_a)
        out["ref_audio"] = self.encode_audio(batch["ref_audio"])                  # (B, K, T_r, C_a)
        if "ref_audio_start" in batch:  # in-pair voice stretches: mel frame -> latent frame
            out["ref_audio_start"] = torch.where(batch["ref_audio_start"] >= 0, batch["ref_audio_start"] // pa, -1)
        out["ref_images"] = self.encode_images(batch["ref_images"])               # (B, K, C_v, h, w)
        out["ref_pixels"] = batch["ref_images"]  # LIReFL's pixel reward compares the decoded video with these
        if "video" not in batch:  # the audio-only corpus
            return out
        out["video"] = self.encode_video(batch["video"])                          # (B, t, C_v, h, w)
        if "source_mask" in batch:  # train.task_inputs blanks video * (1 - mask): on latents, every latent touching a box
            out["source_mask"] = self.pool_mask(batch["source_mask"])             # (B, t, 1, h, w)
        if "ref_frame" in batch:  # an in-pair portrait's frame -> the latent frame holding it
            out["ref_frame"] = torch.where(batch["ref_frame"] >= 0, batch["ref_frame"] // pt, -1)
        scale = torch.tensor([pw, ph, pw, ph], dtype=torch.float)
        # pixel boxes -> latent-grid boxes (relative_boxes keeps the same fractions), one per latent frame
        if "boxes" in batch:
            out["boxes"] = latent_frames(batch["boxes"].float() / scale, pt)                  # (B, K, t, 4)
        if "trajectories" in batch:
            out["trajectories"] = latent_frames(batch["trajectories"].float() / scale[:2], pt)  # (B, K, t, P, 2)
        return out

    @torch.no_grad()
    def encode_condition(self, cond):
        """A sampling Conditioning over pixels and mel -> the same over latents: references, RV2AV's source
        video (the masked frames encoded, the mask pooled as in encode_batch), RA2V's driving audio; boxes
        and trajectories (fractions of the frame already) keep one frame per latent frame."""
        source = cond.source_video
        if source is not None:                                                    # (B, T, 3 + 1, H, W)
            video, mask = source[:, :, :3], source[:, :, 3:]
            pooled = self.pool_mask(mask)
            source = torch.cat([self.encode_video(video) * (1 - pooled), pooled], dim=2)  # (B, t, C_v + 1, h, w)
        driving = None if cond.driving_audio is None else self.encode_audio(cond.driving_audio)
        pt = self.cfg.video_patch[0]
        frames = lambda x: None if x is None else latent_frames(x, pt)  # noqa: E731
        return dataclasses.replace(cond, ref_images=self.encode_images(cond.ref_images),
                                   ref_audio=self.encode_audio(cond.ref_audio), source_video=source,
                                   driving_audio=driving, boxes=frames(cond.boxes),
                                   trajectories=frames(cond.trajectories))

    def latent_shapes(self, video_shape, audio_shape) -> tuple:
        """Pixel shapes (B, T, 3, H, W), (B, T_mel, n_mels) -> the latent shapes the model samples."""
        pt, ph, pw = self.cfg.video_patch
        B, T, _, H, W = video_shape
        return ((B, T // pt, self.cfg.video_channels, H // ph, W // pw),
                (audio_shape[0], audio_shape[1] // self.cfg.audio_patch, self.cfg.audio_channels))

    def state(self) -> dict:
        """What a checkpoint stores to rebuild this codec: its config and weights."""
        return dict(config=dataclasses.asdict(self.cfg), n_mels=self.n_mels, weights=self.state_dict())

    @classmethod
    def from_state(cls, state: dict) -> "ToyCodec":
        cfg = dict(state["config"], video_patch=tuple(state["config"]["video_patch"]))
        codec = cls(CodecConfig(**cfg), int(state["n_mels"]))
        codec.load_state_dict(state["weights"])
        return codec.eval()


# ------------------------------------------------------------------------------------------------
# Training and caching
# ------------------------------------------------------------------------------------------------


def training_clips(world, cfg: CodecConfig, seed: int) -> dict:
    """Clips of the toy world for the codec (a stream of their own: 9), as stacked videos, mels, portraits."""
    import data  # the toy world: only training needs it
    world = dataclasses.replace(world, cross_pair=0.5)  # portraits of both kinds
    clips = [data.make_clip(data.sample_rng(seed, 9, 0, i), world) for i in range(cfg.clips)]
    return dict(video=torch.stack([c["video"] for c in clips]),
                audio=torch.stack([c["audio"] for c in clips]),
                images=torch.cat([c["ref_images"] for c in clips]),
                ref_audio=torch.cat([c["ref_audio"] for c in clips]))


def train_codec(world, cfg: CodecConfig = CodecConfig(), log=print) -> ToyCodec:
    """Train both codecs on fresh clips of `world` and return the codec (eval mode)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    codec = ToyCodec(cfg, world.n_mels)
    clips = training_clips(world, cfg, cfg.seed)
    # video patches of the clips and of the portraits as still clips (what encode_images feeds it)
    still = clips["images"][:, None].expand(-1, cfg.video_patch[0], -1, -1, -1)
    rows = torch.cat([video_patches(clips["video"], cfg.video_patch).reshape(-1, codec.video.encoder[0].in_features),
                      video_patches(still, cfg.video_patch).reshape(-1, codec.video.encoder[0].in_features)])
    log(f"video codec: {len(rows):,} patches of {rows.shape[1]} numbers -> {cfg.video_channels} channels")
    codec.video.fit(rows, cfg, cfg.video_seconds, gen, log)
    width = cfg.audio_patch * world.n_mels                                        # clips and reference voices
    rows = torch.cat([clips["audio"].reshape(-1, width), clips["ref_audio"].reshape(-1, width)])
    log(f"audio codec: {len(rows):,} patches of {rows.shape[1]} numbers -> {cfg.audio_channels} channels")
    codec.audio.fit(rows, cfg, cfg.audio_seconds, gen, log)
    return codec.eval()


@torch.no_grad()
def round_trip_errors(codec: ToyCodec, world, clips: int = 32, seed: int = 1) -> dict:
    """Held-out round trips (a seed training never used): video PSNR (dB, pixels in [-1, 1]) and mean
    absolute pixel error in 0-255 levels; audio mean absolute error in normalised log-mel units, against the
    spread of the mel itself (its mean absolute deviation), so 0.1 of 0.8 reads as 'an eighth of the signal'."""
    batch = training_clips(world, dataclasses.replace(codec.cfg, clips=clips), seed)
    video = codec.decode_video(codec.encode_video(batch["video"]))
    mse = F.mse_loss(video, batch["video"]).item()
    mel = codec.decode_audio(codec.encode_audio(batch["audio"]))
    return dict(video_psnr=10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))).item(),
                video_levels=(video - batch["video"]).abs().mean().item() * 127.5,
                audio_error=(mel - batch["audio"]).abs().mean().item(),
                audio_spread=(batch["audio"] - batch["audio"].mean()).abs().mean().item())


class CodecError(ValueError):
    """A codec file that cannot be used; the message is one line for the user."""


def load_codec(path: str) -> ToyCodec:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return ToyCodec.from_state(state)
    except Exception as e:  # unreadable, truncated, not a pickle, not a codec: one line whichever it is
        raise CodecError(f"--codec {path} is not a readable codec file ({type(e).__name__}); delete it and "
                         "train.py trains a new one") from None


def load_or_train(path: str, world, cfg: CodecConfig = CodecConfig(), log=print) -> ToyCodec:
    """The codec cached at `path`, or a new one trained on `world` and saved there atomically."""
    if os.path.exists(path):
        return load_codec(path)
    log(f"training the toy's latent codecs (about {cfg.video_seconds + cfg.audio_seconds:.0f} s), cached at {path}")
    codec = train_codec(world, cfg, log)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(codec.state(), path + ".tmp")
    os.replace(path + ".tmp", path)  # a crash mid-write leaves no half file behind
    return codec


def main():
    import data
    from cli import OneLineParser
    parser = OneLineParser(description="Train the toy's latent codecs and print their held-out round trips.")
    parser.add_argument("--out", default="out/codec.pt", help="where to save the codec (replaced if it exists)")
    for name in ("video_seconds", "audio_seconds", "clips", "seed"):
        default = getattr(CodecConfig, name)
        parser.add_argument(f"--{name}", type=type(default), default=default, help=f"(default: {default})")
    args = parser.parse_args()
    if min(args.video_seconds, args.audio_seconds) <= 0 or args.clips < 1:
        parser.exit(2, "error: --video_seconds and --audio_seconds must be positive and --clips at least 1\n")
    cfg = CodecConfig(video_seconds=args.video_seconds, audio_seconds=args.audio_seconds, clips=args.clips,
                      seed=args.seed)
    world = data.WorldConfig()
    if os.path.exists(args.out):
        os.remove(args.out)
    codec = load_or_train(args.out, world, cfg)
    errors = round_trip_errors(codec, world)
    print(f"held-out round trip: video {errors['video_psnr']:.1f} dB PSNR ({errors['video_levels']:.1f} levels of 255 "
          f"off per pixel), audio {errors['audio_error']:.3f} mean |error| against a spread of {errors['audio_spread']:.3f}")


if __name__ == "__main__":
    main()
