"""Sampling: integrate the learned flow from noise to a clip with sound, and write what a person opens.

Flow sampler: start at pure noise (t = 1) and step the ODE dx/dt = v(x, t) down to t = 0 over a
shifted schedule sigma' = s sigma / (1 + (s-1) sigma) (Ovi: s = 5), with Euler steps or Heun's
second-order correction. Guidance, per modality, with every pass in one batch:
  plain (Ovi)            v = v_neg + cfg (v_pos - v_neg); negative = empty caption, references kept
  multi (DreamID-Omni)   four passes: positive; negative text; video references zeroed; audio references zeroed
                         video = v_neg + 3.0 (v_pos - v_neg) + 1.5 (v_pos - v_no_video_ref)
                         audio = a_neg + 4.0 (a_pos - a_neg) + 2.0 (a_pos - a_no_audio_ref)
  presence (Identity-as-Presence)  v = v_neg + 4.0 (v_pos - v_neg), audio 3.0; negative = empty caption with
                         the face kept and the voice dropped (the default for a presence checkpoint)
Tasks (DreamID-Omni): r2av generates both streams from the references; rv2av also gets a source video
with the subject regions masked (--source_video, --source_mask); ra2v gets a driving audio track
(--driving_audio), which is then the clip's sound.
Ovi's own modes, for latent models: image-to-audio-video (--first_frame: the first latent frame given, kept
clean, its tokens modulated at t = 0), skip-layer guidance (--slg_layer: the negative pass skips one layer; 11
for Ovi's weights, as Ovi samples), and Ovi's negative prompts, one per tower ("jitter, bad hands, blur,
distortion" / "robotic, muffled, echo, distorted"), encoded with --text_encoder or read from prepare.py's
negative.pt; the real encoders (encoders.py) take --caption and the references to an .mp4 with sound.

    python sample.py --ckpt out/toy/ckpt.pt --demo --out_dir out/sample
    python sample.py --ckpt out/toy/ckpt.pt --caption "the one in red <sub1>: ... <sub1> says <S> tamu <E>" \
        --ref_image face.png --ref_audio voice.wav --out_dir out/mine
    python sample.py --ckpt out/toy/ckpt.pt --caption "..." --out_dir out/t2av   # no references: text-to-audio-video

The case it samples for is cases.py's (a caption and the user's files, the demo, a latent shard); what it writes,
outputs.py's: video.gif, audio.wav, video.mp4 (with sound, when PyAV is installed), the references, and
index.html showing references, caption and result (and the toy world's own clip for --demo).
"""
from __future__ import annotations

import dataclasses
import math
import os

import torch

import build
import cases
import checkpoint
import lora
import outputs
import precision as precision_lib
import presence
from cli import OneLineParser, out_dir_problems, parse_bool
from conditioning import Conditioning
from inputs import InputError


# ------------------------------------------------------------------------------------------------
# The sampler
# ------------------------------------------------------------------------------------------------


OVI_SHIFT = 5.0  # Ovi's released sampler (720p)
OVI_SLG_LAYER = 11  # Ovi's inference_fusion.yaml: the negative pass skips fusion block 11
OVI_CFG = dict(cfg_video=4.0, cfg_audio=3.0)  # and its guidance scales (video_/audio_guidance_scale)


def trained_shift(ckpt: dict | None) -> float:
    """The sampler's default shift: the one the model was trained with (train.py --t_shift), so sampling
    spends its steps at the noise levels training visited (tests/test_sample.py). Ovi's weights: 5."""
    if ckpt is None:
        return OVI_SHIFT
    return float(ckpt.get("train_config", {}).get("t_shift", 3.0))  # 3.0: checkpoints from before the field


def schedule(steps: int, shift: float) -> torch.Tensor:
    """(steps + 1,) noise levels from 1 to 0, shifted toward noise: s*sigma / (1 + (s-1)*sigma)."""
    sigma = torch.linspace(1, 0, steps + 1)
    return shift * sigma / (1 + (shift - 1) * sigma)


def guide(v_cond, v_uncond, scale: float):
    """Classifier-free guidance: scale 1 = conditional only; > 1 pushes away from the unconditional."""
    return v_uncond + scale * (v_cond - v_uncond)


@dataclasses.dataclass
class Guidance:
    mode: str = "plain"             # plain | multi | presence | none
    cfg_video: float = 2.0          # plain (Ovi: 4.0 video, 3.0 audio)
    cfg_audio: float = 2.0
    mc_text_video: float = 3.0      # multi: DreamID-Omni's released scales
    mc_ref_video: float = 1.5
    mc_text_audio: float = 4.0
    mc_ref_audio: float = 2.0
    presence_video: float = 4.0     # presence: Identity-as-Presence's released scales; its negative pass
    presence_audio: float = 3.0     # is the empty prompt with the face kept and the voice dropped
    slg_layer: int = -1             # skip-layer guidance (Ovi: 11): the negative pass skips this TwinLayer; -1 off

    def passes(self) -> list[str]:
        """Which conditionings each step evaluates (all in one batch)."""
        if self.mode == "multi":
            return ["pos", "neg", "no_video_ref", "no_audio_ref"]
        if self.mode == "presence":
            return ["pos", "neg_keep_face"]
        if self.mode == "plain" and (self.cfg_video != 1.0 or self.cfg_audio != 1.0):
            return ["pos", "neg"]
        return ["pos"]

    def combine(self, v: dict, a: dict):
        """The guided (video, audio) velocity from each pass's output, keyed by the names of passes()."""
        if self.mode == "multi":  # DreamID-Omni eq.: a text term and a reference term per modality
            video = v["neg"] + self.mc_text_video * (v["pos"] - v["neg"]) + self.mc_ref_video * (v["pos"] - v["no_video_ref"])
            audio = a["neg"] + self.mc_text_audio * (a["pos"] - a["neg"]) + self.mc_ref_audio * (a["pos"] - a["no_audio_ref"])
            return video, audio
        if self.mode == "presence":
            return (guide(v["pos"], v["neg_keep_face"], self.presence_video),
                    guide(a["pos"], a["neg_keep_face"], self.presence_audio))
        if "neg" in v:  # plain CFG, with separate scales for the two towers as Ovi samples
            return guide(v["pos"], v["neg"], self.cfg_video), guide(a["pos"], a["neg"], self.cfg_audio)
        return v["pos"], a["pos"]  # no guidance: one conditional pass

    def skip(self, names: list[str], batch: int, device) -> dict:
        """The model's skip-layer arguments for one batch of passes: the negative passes' rows skip slg_layer
        (Ovi's skip-layer guidance); {} when it is off."""
        if self.slg_layer < 0:
            return {}
        rows = torch.tensor([name.startswith("neg") for name in names], device=device)   # (n,) per pass
        return dict(skip_layer=self.slg_layer, skip_rows=rows.repeat_interleave(batch))  # (n * B,) passes major


def conditionings(cond: Conditioning, names: list[str], negative: dict | None = None) -> Conditioning:
    """The conditioning of each guidance pass, concatenated along the batch in the order of `names`.

    The negative passes use the very operations training's condition dropout uses (conditioning.py), so
    each asks the model something it was trained on: "neg" = the empty prompt (references kept),
    "no_video_ref" / "no_audio_ref" = the reference images / voices masked out of every attention.
    negative: real prompts' features {"video": (L, D), "audio": (L, D)} -- Ovi's negative prompts, one per tower
    -- which replace the empty prompt of "neg"."""
    everyone = torch.ones(cond.batch_size, dtype=torch.bool)  # at sampling, every sample of the pass is dropped
    if negative is not None:  # every pass then names the audio tower's prompt (the same as the video's but in neg)
        cond = dataclasses.replace(cond, text_audio=cond.text)
    make = {"pos": lambda: cond, "neg": lambda: cond.drop_prompt(everyone) if negative is None else
            cond.negative_prompts(negative["video"], negative["audio"]),
            "no_video_ref": lambda: cond.drop_references(everyone, voices=False),
            "no_audio_ref": lambda: cond.drop_references(everyone, images=False),
            "neg_keep_face": lambda: cond.drop_prompt(everyone).drop_references(everyone, images=False)}
    return Conditioning.cat([make[name]() for name in names])


@torch.no_grad()
def sample(net, cond: Conditioning, video_shape, audio_shape, steps: int = 30, shift: float = 3.0,
           guidance: Guidance = Guidance(mode="none"), seed: int = 0, solver: str = "euler", device="cpu",
           keep_source: bool = True, identity_cache: bool = True, precision: str = "", negative: dict | None = None):
    """Generate (video (B, T, C, H, W), audio (B, T_a, C_a)) for the conditioning `cond`.

    cond.source_video (B, T, C+1, H, W) makes it RV2AV, cond.driving_audio (B, T_a, C_a) RA2V.
    keep_source (RV2AV): after every step, the region outside the mask is reset to the source noised to
        the current level (inpainting by replacement; like DreamID-Omni's sampler, which overwrites the
        clean reference tail at every step), so what is not to be edited stays the source.
    identity_cache (presence models): compute the identity tokens' keys/values once per clip (IdentityCache)
        instead of at every step; the result is the same.
    precision: bf16 | fp32 (precision.py; "" = bf16 on CUDA, fp32 elsewhere): the forward's autocast.
    negative: Ovi's per-tower negative prompts' features for the "neg" pass (conditionings).
    cond.first_frame (B, 1, C, h, w) makes it I2AV (Ovi): the first latent frame is set to it before every step
        and at the end, and the model modulates its tokens at t = 0 (model.segments).
    guidance.slg_layer >= 0: the negative passes skip that layer (Ovi's skip-layer guidance).
    Deterministic per seed: the noise comes from its own generator.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)  # its own generator: the global RNG is left alone
    x_v = torch.randn(video_shape, generator=gen).to(device)  # t = 1: pure noise
    x_a = torch.randn(audio_shape, generator=gen).to(device)
    B = video_shape[0]
    names = guidance.passes()  # e.g. ["pos", "neg"]: each step evaluates all of them as one batch
    n = len(names)
    batched = conditionings(cond, names, negative).to(device)
    skip = guidance.skip(names, B, device)
    first = cond.first_frame.to(device) if cond.first_frame is not None else None

    def with_first(x):  # I2AV: the given first latent frame, clean, in place of the sample's
        return x if first is None else torch.cat([first.to(x.dtype), x[:, 1:]], dim=1)
    regime = precision_lib.resolve(precision, device)
    # presence models take their clip's IdentityCache (filled by the first call); other models take nothing more
    clip_state = dict(cache=presence.IdentityCache()) if identity_cache and net.cfg.ref_mode == "presence" else {}

    def velocity(x_v, x_a, sigma):
        """The guided velocity at noise level sigma: every pass in one batch of B * n, then combined."""
        t = torch.full((B * n,), float(sigma), device=device)
        x_v = with_first(x_v)  # at every evaluation
        with precision_lib.autocast(device, regime):
            v, a = net(x_v.repeat(n, 1, 1, 1, 1), x_a.repeat(n, 1, 1), t, batched, **clip_state, **skip)  # (B * n, ...)
        return guidance.combine(dict(zip(names, v.float().chunk(n))), dict(zip(names, a.float().chunk(n))))

    replace = keep_source and cond.source_video is not None
    if replace:
        C = video_shape[2]  # the source carries C channels of video plus one of mask
        source = cond.source_video.to(device)
        known, edit = source[:, :, :C], source[:, :, C:]  # edit: 1 = regenerate
        source_noise = x_v.clone()  # one fixed noise draw for the kept region's path
    sigmas = schedule(steps, shift)
    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        d_v, d_a = velocity(x_v, x_a, s)
        if solver == "heun" and s_next > 0:  # average the slope at both ends (second order)
            e_v, e_a = velocity(x_v + (s_next - s) * d_v, x_a + (s_next - s) * d_a, s_next)
            d_v, d_a = (d_v + e_v) / 2, (d_a + e_a) / 2
        x_v, x_a = x_v + (s_next - s) * d_v, x_a + (s_next - s) * d_a  # Euler: dx = v dt, dt < 0
        if replace:  # the kept region follows the source's own path x_t = (1 - t) source + t noise
            x_v = edit * x_v + (1 - edit) * ((1 - s_next) * known + s_next * source_noise)
    x_v = with_first(x_v)  # and it is what the clip starts with (Ovi resets it after the loop too)
    return x_v.clamp(-1, 1) if video_shape[2] == 3 else x_v, x_a  # pixels live in [-1, 1]; latents and mel do not


def sample_pixels(net, cond: Conditioning, video_shape, audio_shape, codec=None, **kw):
    """`sample` in the toy world's pixels and mel. A mini-Ovi model (a `codec`, codec.py) samples the codec's
    latents instead: its references and task inputs are encoded first and the result is decoded, as Ovi's
    pipeline encodes with Wan2.2's and MMAudio's VAEs and decodes with them."""
    if codec is None:
        return sample(net, cond, video_shape, audio_shape, **kw)
    video, audio = sample(net, codec.encode_condition(cond), *codec.latent_shapes(video_shape, audio_shape), **kw)
    with torch.no_grad():
        return codec.decode_video(video.cpu().float()), codec.decode_audio(audio.cpu().float())


def flag_problems(args) -> list[str]:
    """Flag values that cannot make a sample, one line each; checked before any model work (a bad --out_dir
    used to be found only after sampling had finished)."""
    problems = []
    if args.steps < 1:
        problems.append(f"--steps must be at least 1, got {args.steps}")
    if not 0 <= args.seed < 2 ** 63:  # torch.Generator takes a 64-bit seed
        problems.append(f"--seed must be in 0 .. 2**63 - 1, got {args.seed}")
    if args.demo and (args.caption or args.ref_image or args.ref_audio):  # one of them would be ignored
        problems.append("--demo samples the built-in case with its own caption and references: drop --caption, "
                        "--ref_image and --ref_audio, or drop --demo")
    if args.shift is not None and args.shift <= 0:
        problems.append(f"--shift must be positive, got {args.shift}")
    problems += [f"--{name} must be a finite number, got {value}" for name, value in vars(args).items()
                 if isinstance(value, float) and not math.isfinite(value)]   # NaN passes every comparison
    if args.latent_index < 0:
        problems.append(f"--latent_index must be 0 or more, got {args.latent_index}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"--device {args.device}: this machine has no CUDA GPU; use --device cpu")
    elif args.device.split(":")[0] not in ("cpu", "cuda", "mps"):
        problems.append(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    problems += out_dir_problems(args.out_dir)
    return problems


def add_guidance_flags(parser):
    """--guidance, --ref_mode, --slg_layer and one flag per scale of Guidance (cfg_video and cfg_audio default to
    None: guidance_for fills in ours or Ovi's, by checkpoint)."""
    parser.add_argument("--guidance", choices=["plain", "multi", "presence", "none"], default=None,
                        help="plain: Ovi's per-modality CFG; multi: DreamID-Omni's 4-pass form; presence: "
                             "Identity-as-Presence's (face kept in the negative). Default: presence for a presence "
                             "checkpoint, else plain")
    parser.add_argument("--ref_mode", choices=["concat", "presence"], default=None,
                        help="how the checkpoint takes references (it knows; give it to check)")
    defaults = Guidance()
    parser.add_argument("--slg_layer", type=int, default=None,
                        help="skip-layer guidance: the negative pass skips this layer (default: 11 for Ovi's weights, "
                             "as Ovi samples; off, -1, for ours)")
    for field in dataclasses.fields(Guidance):
        if field.name in OVI_CFG:  # cfg_video, cfg_audio: their default depends on the checkpoint (guidance_for)
            parser.add_argument(f"--{field.name}", type=float, default=None,
                                help=f"plain guidance scale ({field.name[4:]}; default {getattr(defaults, field.name)}, "
                                     f"and Ovi's {OVI_CFG[field.name]} for Ovi's weights)")
        elif field.name not in ("mode", "slg_layer"):
            parser.add_argument(f"--{field.name}", type=float, default=getattr(defaults, field.name),
                                help=f"guidance scale ({field.name.split('_')[0].replace('cfg', 'plain').replace('mc', 'multi')})")


def parse_args(argv=None):
    parser = OneLineParser(description="Generate a clip with sound from a caption and references.")
    parser.add_argument("--ckpt", required=True, help="our ckpt.pt (train.py), or Ovi's .safetensors / index / folder")
    parser.add_argument("--caption", help="structured caption with <subk> anchors and <S> ... <E> lines")
    parser.add_argument("--ref_image", action="append", default=[], help="reference image, once per subject")
    parser.add_argument("--ref_audio", action="append", default=[], help="reference voice .wav, once per subject")
    parser.add_argument("--demo", action="store_true", help="use a built-in toy case (held-out identities)")
    parser.add_argument("--scene", default="single", choices=["single", "dialogue", "complex", "mixed"],
                        help="--demo: which kind of scene")
    parser.add_argument("--latent_cond", help="real data: a latent shard whose conditioning to sample (writes latents.pt)")
    parser.add_argument("--latent_index", type=int, default=0, help="--latent_cond: which sample of the shard")
    parser.add_argument("--video_vae", help="latent models: Wan2.2's VAE folder (diffusers): encodes --ref_image, decodes the frames")
    parser.add_argument("--text_encoder", help="latent models: umT5-XXL folder (transformers): encodes --caption")
    parser.add_argument("--audio_vae", help="latent models: MMAudio's v1-16.pth: encodes --ref_audio, decodes the sound")
    parser.add_argument("--vocoder", help="latent models: MMAudio's best_netG.pt (BigVGAN): the sound's waveform")
    parser.add_argument("--first_frame", help="latent models (I2AV, Ovi's i2v): the clip's first frame, an image")
    parser.add_argument("--area", type=int, default=720 * 720,
                        help="latent models with --caption: frame area; the aspect is the first reference image's")
    parser.add_argument("--out_dir", default="out/sample", help="where to write (only our own files are replaced)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (default when available) or cpu")
    parser.add_argument("--precision", choices=["", *precision_lib.CHOICES], default="",
                        help="bf16: bf16 weights (Ovi: 23 GB instead of 47) and bf16 autocast, norms and modulation "
                             "in fp32; fp32: all fp32 (default: bf16 on CUDA, fp32 elsewhere)")
    parser.add_argument("--steps", type=int, default=30, help="sampling steps (Ovi: 50)")
    parser.add_argument("--shift", type=float, default=None,
                        help="schedule shift (default: the shift the checkpoint was trained with, --t_shift; Ovi's: 5)")
    parser.add_argument("--solver", choices=["euler", "heun"], default="euler", help="ODE solver")
    parser.add_argument("--task", choices=["r2av", "rv2av", "ra2v"], default="r2av", help="DreamID-Omni's tasks")
    parser.add_argument("--source_video", help="rv2av: the video to edit (.gif/.webp)")
    parser.add_argument("--source_mask", help="rv2av: mask animation, white = the region to regenerate")
    parser.add_argument("--driving_audio", help="ra2v: the sound track to animate (.wav)")
    parser.add_argument("--keep_source", type=parse_bool, default=True,
                        help="rv2av: keep the region outside the mask as the source (replacement); true|false")
    add_guidance_flags(parser)
    parser.add_argument("--seed", type=int, default=0, help="the starting noise")
    parser.add_argument("--no_ema", action="store_true", help="use the raw weights instead of the EMA")
    parser.add_argument("--motion", help="DreamVideo-Omni: a JSON of boxes (and points) per subject "
                                         "(inputs.load_motion); --demo uses the world's own")
    parser.add_argument("--merge_lora", type=parse_bool, default=False,
                        help="a LoRA checkpoint: fold the adapters into the base weights first (same result, "
                             "plain linear layers); true|false")
    args = parser.parse_args(argv)
    problems = flag_problems(args)
    if problems:  # all at once, before any model work
        parser.exit(2, "".join(f"error: {p}\n" for p in problems))
    return args


def guidance_for(args, mcfg: build.ModelConfig) -> Guidance:
    """The --guidance form and scales; by default the one the checkpoint's kind of model was released with."""
    if args.ref_mode and args.ref_mode != mcfg.ref_mode:
        raise InputError(f"--ref_mode {args.ref_mode}: {args.ckpt} was trained with ref_mode {mcfg.ref_mode}")
    mode = args.guidance or ("presence" if mcfg.ref_mode == "presence" else "plain")
    ovi = checkpoint.is_ovi_checkpoint(args.ckpt)  # Ovi's weights sample as Ovi's inference does
    slg = args.slg_layer if args.slg_layer is not None else (OVI_SLG_LAYER if ovi else -1)
    if slg >= mcfg.layers:
        raise InputError(f"--slg_layer {slg}: the model has layers 0..{mcfg.layers - 1}")
    scales = {name: getattr(args, name) if getattr(args, name) is not None else
              (OVI_CFG[name] if ovi else getattr(Guidance, name)) for name in OVI_CFG}   # Ovi samples at 4 and 3
    return Guidance(mode=mode, slg_layer=slg, **scales, **{f.name: getattr(args, f.name) for f in dataclasses.fields(Guidance)
                                                           if f.name not in ("mode", "slg_layer", *OVI_CFG)})


def main():
    args = parse_args()
    regime = precision_lib.resolve(args.precision, args.device)
    precision_lib.enable_tf32(args.device)
    run = dict(steps=args.steps, shift=args.shift, seed=args.seed, solver=args.solver, device=args.device,
               keep_source=args.keep_source, precision=regime)
    try:  # every input problem ends here as one line, before any model work
        # real data (Ovi's weights or a latent shard) has no toy world: its own path, which writes latents
        if checkpoint.is_ovi_checkpoint(args.ckpt) or args.latent_cond or args.video_vae or args.text_encoder:
            run["shift"] = args.shift or (trained_shift(None) if checkpoint.is_ovi_checkpoint(args.ckpt)
                                          else trained_shift(checkpoint.load_checkpoint(args.ckpt)))
            run["guidance"] = guidance_for(args, build.PRESETS["full"] if checkpoint.is_ovi_checkpoint(args.ckpt)
                                           else checkpoint.config_from_checkpoint(checkpoint.load_checkpoint(args.ckpt)))
            return sample_latents(args, run)
        ckpt = checkpoint.load_checkpoint(args.ckpt, need=("world_config",))
        run["shift"] = args.shift or trained_shift(ckpt)
        world = checkpoint.world_from_checkpoint(ckpt, args.ckpt)  # sizes, rates and mel settings the model knows
        caption, batch, cond, truth = cases.toy_case(args, world)  # inputs before weights: a bad file fails fast
        run["guidance"] = guidance_for(args, checkpoint.config_from_checkpoint(ckpt, args.ckpt))
        net = checkpoint.model_from_checkpoint(args.ckpt, use_ema=not args.no_ema, device=args.device,
                                           dtype=precision_lib.compute_dtype(regime))
        if args.merge_lora:
            print(f"merged {lora.merge(net)} LoRA adapters into their base weights")
    except (InputError, checkpoint.CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    video, audio = sample_pixels(net, cond, (1, world.frames, 3, world.image_size, world.image_size),
                                 (1, world.mel_frames, world.n_mels), checkpoint.codec_from_checkpoint(ckpt, args.ckpt),
                                 **run)
    check_finite_sample(video, audio)
    if cond.driving_audio is not None:  # RA2V: the sound is the given track
        audio = cond.driving_audio
    motion = None if cond.boxes is None else (cond.boxes[0], cond.trajectories[0])  # drawn over the result
    try:
        outputs.write_outputs(args.out_dir, video[0].cpu(), audio[0].cpu(), world, caption, batch["ref_images"][0],
                              batch["ref_audio"][0], truth, motion)
    except OSError as e:  # a full disk, a folder made read-only meanwhile: one line, not a traceback
        raise SystemExit(f"error: --out_dir {args.out_dir}: cannot write ({e.strerror or e}); give a writable folder")
    print(f"caption: {caption}")
    print(f"wrote {args.out_dir}/index.html (video.gif, audio.wav{', video.mp4' if os.path.exists(os.path.join(args.out_dir, 'video.mp4')) else ''})")


SANE = 1e3  # pixels sit in [-1, 1], normalised log-mels and VAE latents within a few units: far past this is broken


def check_finite_sample(video, audio):
    """Stop with one line when the sample holds NaN / inf or values far beyond any data (guidance scales far too
    large, a model that diverged): they would otherwise reach the Griffin-Lim vocoder and fail deep inside it."""
    if not (video.abs().max() < SANE and audio.abs().max() < SANE):  # NaN compares False: caught too
        raise SystemExit("error: the sample came out NaN/inf or absurdly large: guidance scales too large (--cfg_video, "
                         "--cfg_audio, --mc_* / --presence_*) or a model that diverged; nothing was written")


def sample_latents(args, run: dict):
    """Real data (Ovi's weights or our `full` checkpoints): the case is a latent shard's sample (--latent_cond) or
    the user's caption and references encoded with the real encoders (encoders.py); the result is latents.pt and,
    given the VAEs and the vocoder, video.mp4 with sound."""
    if not (args.latent_cond or args.caption):
        raise InputError(f"{args.ckpt} is a latent model (Ovi): give --caption with --ref_image/--ref_audio and "
                         "the encoders (--video_vae, --text_encoder, --audio_vae), or --latent_cond SHARD.pt")
    import encoders
    try:  # the encoders first: a wrong folder fails before the 11.7B model is read
        enc = encoders.Encoders(args.video_vae, args.text_encoder, args.audio_vae, args.vocoder, device=args.device)
        net = checkpoint.model_from_checkpoint(args.ckpt, use_ema=not args.no_ema, device=args.device,
                                               dtype=precision_lib.compute_dtype(run["precision"]))
        if args.latent_cond:
            cond, video_shape, audio_shape = cases.latent_case(args.latent_cond, args.latent_index, net.cfg)
        else:
            cond, video_shape, audio_shape = real_case(args, enc)
        negative = negative_prompts(args, enc)
    except encoders.EncoderError as e:
        raise InputError(str(e)) from None
    if args.first_frame and cond.first_frame is None:
        raise InputError("--first_frame needs --video_vae and --caption (it is encoded with the clip's references)")
    video, audio = sample(net, cond, video_shape, audio_shape, negative=negative, **run)
    check_finite_sample(video, audio)
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "latents.pt")
    torch.save(dict(video=video[0].cpu(), audio=audio[0].cpu()), path)
    print(f"wrote {path}: video latents {tuple(video.shape[1:])}, audio latents {tuple(audio.shape[1:])}")
    if enc.video is not None and enc.audio is not None and enc.audio.vocoder is not None:
        frames = enc.video.decode(video)[0]                                         # (T, 3, H, W) in [0, 1]
        wave = enc.audio.decode(audio)[0]                                           # (samples,) at 16 kHz
        pixels = (frames.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
        mp4 = os.path.join(args.out_dir, "video.mp4")
        if not outputs.write_clip_mp4(mp4, pixels, wave, encoders.FPS, encoders.SAMPLE_RATE):
            raise SystemExit("error: writing .mp4 needs PyAV: pip install -r requirements-real.txt")
        print(f"wrote {mp4}: {len(pixels)} frames of {pixels.shape[2]}x{pixels.shape[1]} at {encoders.FPS} fps, "
              f"{wave.numel() / encoders.SAMPLE_RATE:.2f} s of sound")
    else:
        print("decode them to video.mp4 by giving --video_vae, --audio_vae and --vocoder")


def negative_prompts(args, enc) -> dict | None:
    """Ovi's per-tower negative prompts as features: encoded now with --text_encoder, or read from the
    negative.pt prepare.py wrote beside --latent_cond's shard; None (the empty prompt) without either."""
    import prepare
    if enc.text is not None:
        return {k: enc.text.encode(p)[0] for k, p in prepare.OVI_NEGATIVE.items()}
    path = os.path.join(os.path.dirname(os.path.abspath(args.latent_cond)), "negative.pt") if args.latent_cond else ""
    if path and os.path.exists(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return dict(video=saved["video_emb"], audio=saved["audio_emb"])
    return None


def real_case(args, enc):
    """The user's caption and references through the real encoders, exactly as prepare.py encodes a clip:
    (Conditioning, video latent shape, audio latent shape) for Ovi's 5 s clip in the references' aspect bucket."""
    import caption as caption_lib
    import encoders
    import inputs
    import prepare
    enc.require("video", "text", "audio")
    try:
        structure = caption_lib.text_structure(encoders.clean_prompt(args.caption))
    except caption_lib.CaptionError as e:
        raise InputError(f"--caption: {e}") from None
    k = len(structure["subject_spans"])
    if len(args.ref_image) != k or len(args.ref_audio) != k:
        raise InputError(f"--caption names {k} subject(s): give --ref_image and --ref_audio once per subject "
                         f"(got {len(args.ref_image)} and {len(args.ref_audio)})")
    shaped_by = args.first_frame or args.ref_image[0]   # the frame's aspect: the first frame's, else the first face's
    width, height = inputs.open_image(shaped_by, "--first_frame" if args.first_frame else "--ref_image").size
    size = prepare.bucket(height, width, args.area)
    try:
        row = prepare.caption_row(enc, args.caption, structure)
        row.update(prepare.encode_references(enc, args.ref_image, args.ref_audio, size))
        first = enc.video.encode(prepare.reference_image(args.first_frame, size)[None, None]) if args.first_frame else None
    except prepare.ClipError as e:
        raise InputError(str(e)) from None
    batch = {key: value[None] for key, value in row.items()}                         # a batch of one
    frames = enc.video.latent_frames(encoders.CLIP_FRAMES)
    video_shape = (1, frames, enc.video.channels, size[0] // enc.video.spatial, size[1] // enc.video.spatial)
    cond = dataclasses.replace(Conditioning.from_batch(batch), first_frame=first)   # (1, 1, C, h, w) or None
    return cond, video_shape, (1, encoders.AUDIO_LATENTS, row["ref_audio"].shape[-1])


if __name__ == "__main__":
    main()
