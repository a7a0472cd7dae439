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

    python sample.py --ckpt out/toy/ckpt.pt --demo --out_dir out/sample
    python sample.py --ckpt out/toy/ckpt.pt --caption "the one in red <sub1>: ... <sub1> says <S> tamu <E>" \
        --ref_image face.png --ref_audio voice.wav --out_dir out/mine

Writes: video.gif, audio.wav, video.mp4 (with sound, when PyAV is installed), references, and
index.html showing references, caption and result (and the toy world's own clip for --demo).
"""
from __future__ import annotations

import dataclasses
import html
import math
import os

import numpy as np
import torch

import build
import checkpoint
import data
import lora
import precision as precision_lib
import presence
import speech
from caption import CaptionError, caption_fields
from cli import OneLineParser, out_dir_problems, parse_bool
from inputs import InputError, load_frames, load_image, load_motion, load_wav
from model import Conditioning


# ------------------------------------------------------------------------------------------------
# The sampler
# ------------------------------------------------------------------------------------------------


OVI_SHIFT = 5.0  # Ovi's released sampler (720p)


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


def conditionings(cond: Conditioning, names: list[str]) -> Conditioning:
    """The conditioning of each guidance pass, concatenated along the batch in the order of `names`.

    The negative passes use the very operations training's condition dropout uses (conditioning.py), so
    each asks the model something it was trained on: "neg" = the empty prompt (references kept),
    "no_video_ref" / "no_audio_ref" = the reference images / voices masked out of every attention."""
    everyone = torch.ones(cond.batch_size, dtype=torch.bool)  # at sampling, every sample of the pass is dropped
    make = {"pos": lambda: cond, "neg": lambda: cond.drop_prompt(everyone),
            "no_video_ref": lambda: cond.drop_references(everyone, voices=False),
            "no_audio_ref": lambda: cond.drop_references(everyone, images=False),
            "neg_keep_face": lambda: cond.drop_prompt(everyone).drop_references(everyone, images=False)}
    return Conditioning.cat([make[name]() for name in names])


@torch.no_grad()
def sample(net, cond: Conditioning, video_shape, audio_shape, steps: int = 30, shift: float = 3.0,
           guidance: Guidance = Guidance(mode="none"), seed: int = 0, solver: str = "euler", device="cpu",
           keep_source: bool = True, identity_cache: bool = True, precision: str = ""):
    """Generate (video (B, T, C, H, W), audio (B, T_a, C_a)) for the conditioning `cond`.

    cond.source_video (B, T, C+1, H, W) makes it RV2AV, cond.driving_audio (B, T_a, C_a) RA2V.
    keep_source (RV2AV): after every step, the region outside the mask is reset to the source noised to
        the current level (inpainting by replacement; like DreamID-Omni's sampler, which overwrites the
        clean reference tail at every step), so what is not to be edited stays the source.
    identity_cache (presence models): compute the identity tokens' keys/values once per clip (IdentityCache)
        instead of at every step; the result is the same.
    precision: bf16 | fp32 (precision.py; "" = bf16 on CUDA, fp32 elsewhere): the forward's autocast.
    Deterministic per seed: the noise comes from its own generator.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)  # its own generator: the global RNG is left alone
    x_v = torch.randn(video_shape, generator=gen).to(device)  # t = 1: pure noise
    x_a = torch.randn(audio_shape, generator=gen).to(device)
    B = video_shape[0]
    names = guidance.passes()  # e.g. ["pos", "neg"]: each step evaluates all of them as one batch
    n = len(names)
    batched = conditionings(cond, names).to(device)
    regime = precision_lib.resolve(precision, device)
    cache = presence.IdentityCache() if identity_cache and net.cfg.ref_mode == "presence" else None

    def velocity(x_v, x_a, sigma):
        """The guided velocity at noise level sigma: every pass in one batch of B * n, then combined."""
        t = torch.full((B * n,), float(sigma), device=device)
        with precision_lib.autocast(device, regime):
            extra = {} if cache is None else dict(cache=cache)
            v, a = net(x_v.repeat(n, 1, 1, 1, 1), x_a.repeat(n, 1, 1), t, batched, **extra)  # (B * n, ...)
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
    return x_v.clamp(-1, 1) if video_shape[2] == 3 else x_v, x_a  # pixels live in [-1, 1]; latents and mel do not


# ------------------------------------------------------------------------------------------------
# Inputs: caption, reference images and voices, with clear errors
# ------------------------------------------------------------------------------------------------


def prepare_inputs(caption: str, image_paths: list[str], audio_paths: list[str], world: data.WorldConfig) -> dict:
    """Caption + reference files -> a batch of one (the same keys as a training batch)."""
    try:
        fields = caption_fields(caption)
    except CaptionError as e:
        raise InputError(f"--caption: {e}") from None
    n = len(fields["subject_spans"])
    if n == 0:  # the model is conditioned per subject; a caption without anchors has nothing to bind
        raise InputError("--caption names no subject: describe each one as 'label <sub1>: looks, voice.'")
    if len(fields["speech_spans"]) == 0:  # every training clip has a spoken line; MTP-CA needs one to align
        raise InputError("--caption has no spoken line: give each speaker's words as '<sub1> says <S> ka ta <E>'")
    for flag, paths in (("--ref_image", image_paths), ("--ref_audio", audio_paths)):
        if len(paths) != n:
            raise InputError(f"the caption names {n} subject(s) (<sub1>..<sub{n}>) but {len(paths)} {flag} "
                             f"were given: give one per subject, in <sub1>, <sub2> order")
    ref_len = world.ref_mel_frames * world.hop  # the model was trained on voice clips of exactly this length
    voices = []
    for p in audio_paths:
        wav = load_wav(p, world.sample_rate, max_seconds=ref_len / world.sample_rate + 0.1)[:ref_len]
        voices.append(torch.nn.functional.pad(wav, (0, ref_len - wav.numel())))  # cut / pad to the ref length
    sample = dict(fields, ref_images=torch.stack([load_image(p, world.ref_image_size) for p in image_paths]),
                  ref_audio=speech.wav_to_mel(torch.stack(voices), world))
    return data.collate([sample])


# ------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------


def write_outputs(out_dir: str, video: torch.Tensor, mel: torch.Tensor, world: data.WorldConfig, caption: str,
                  ref_images: torch.Tensor, ref_audio: torch.Tensor, truth: dict | None = None, motion=None):
    """video (T, 3, H, W), mel (T_a, n_mels) -> gif, wav, mp4 (PyAV), references, index.html.

    Writes into out_dir and never deletes anything but its own stale outputs (an mp4 or truth clip from an
    earlier run that this one does not write), so a folder holding other files, or the checkpoint, is safe."""
    os.makedirs(out_dir, exist_ok=True)
    for name in ("video.mp4", "truth.gif", "truth.wav", "motion.gif"):  # ours from an earlier run; rewritten if due
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    frames = data.to_uint8(video)
    data.save_gif(os.path.join(out_dir, "video.gif"), frames, world.fps)   # what a person watches
    data.contact_sheet(frames).save(os.path.join(out_dir, "frames.png"))   # every frame at once, for the page
    wav = speech.mel_to_wav(mel, world)                                       # Griffin-Lim: the toy has no vocoder
    speech.save_wav(os.path.join(out_dir, "audio.wav"), wav, world.sample_rate)
    data.mel_image(mel).save(os.path.join(out_dir, "mel.png"))
    mp4 = write_mp4(os.path.join(out_dir, "video.mp4"), frames, wav, world)
    refs = []
    for k in range(len(ref_images)):
        data.contact_sheet(data.to_uint8(ref_images[k:k + 1]), scale=8, columns=1).save(os.path.join(out_dir, f"ref{k + 1}.png"))
        speech.save_wav(os.path.join(out_dir, f"ref{k + 1}.wav"), speech.mel_to_wav(ref_audio[k], world), world.sample_rate)
        refs.append(k + 1)
    if motion is not None:  # (boxes (K, T, 4), points (K, T, P, 2)): what was asked, drawn over what came
        images = draw_motion(frames, *motion)
        images[0].save(os.path.join(out_dir, "motion.gif"), save_all=True, append_images=images[1:],
                       duration=int(1000 / world.fps), loop=0)
    if truth is not None:
        data.save_gif(os.path.join(out_dir, "truth.gif"), data.to_uint8(truth["video"]), world.fps)
        speech.save_wav(os.path.join(out_dir, "truth.wav"), truth["wav"], world.sample_rate)
    # the page shows the mp4 (picture and sound together) when PyAV wrote one, else the gif and the wav
    media = ('<video src="video.mp4" controls loop width="256"></video>' if mp4 else
             '<img src="video.gif" width="256"><br><audio src="audio.wav" controls></audio>')
    ref_html = "".join(f'<div class="card"><img src="ref{k}.png" width="128"><br>&lt;sub{k}&gt;<br>'
                       f'<audio src="ref{k}.wav" controls></audio></div>' for k in refs)
    truth_html = ('<div class="card"><h3>the toy world\'s own clip</h3><img src="truth.gif" width="256"><br>'
                  '<audio src="truth.wav" controls></audio></div>') if truth is not None else ""
    if motion is not None:
        truth_html += ('<div class="card"><h3>requested boxes and points, over the result</h3>'
                       '<img src="motion.gif" width="256"></div>')
    page = f"""<!doctype html><meta charset="utf-8"><title>omni sample</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{image-rendering:pixelated}} .card{{display:inline-block;
vertical-align:top;margin:0 1.5em 1em 0}} code{{white-space:pre-wrap}}</style>
<h2>references</h2>{ref_html}
<h2>caption</h2><code>{html.escape(caption)}</code>
<h2>result</h2><div class="card"><h3>generated</h3>{media}<br><img src="mel.png"></div>{truth_html}
<p><img src="frames.png"></p>"""
    with open(os.path.join(out_dir, "index.html"), "w") as f:
        f.write(page)


def write_mp4(path: str, frames: np.ndarray, wav: torch.Tensor, world: data.WorldConfig) -> bool:
    """An .mp4 with sound through PyAV (optional: `pip install av`); False when it is not installed."""
    try:
        import av
    except ImportError:
        return False
    scale = 8  # 32x32 frames: enlarge (nearest) so players show them, and H.264 gets even dimensions
    with av.open(path, "w") as container:
        vstream = container.add_stream("libx264", rate=world.fps)
        vstream.width, vstream.height, vstream.pix_fmt = frames.shape[2] * scale, frames.shape[1] * scale, "yuv420p"
        astream = container.add_stream("aac", rate=world.sample_rate)
        for fr in frames:  # (H, W, 3) uint8 each
            big = np.repeat(np.repeat(fr, scale, 0), scale, 1)  # nearest-neighbour: the toy's pixels stay crisp
            for packet in vstream.encode(av.VideoFrame.from_ndarray(big, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():  # flush: the encoder holds frames back for its look-ahead
            container.mux(packet)
        pcm = (wav.numpy()[None] * 32767).astype(np.int16)  # (channels=1, samples), packed s16
        audio_frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        audio_frame.sample_rate = world.sample_rate
        for packet in astream.encode(audio_frame):
            container.mux(packet)
        for packet in astream.encode():  # flush the audio encoder the same way
            container.mux(packet)
    return True


def task_condition(args, world: data.WorldConfig, truth: dict | None):
    """(source_video (1, T, 4, H, W) or None, driving_audio (1, T_a, n_mels) or None) for --task."""
    if args.task == "rv2av":
        if truth is not None:
            video, mask = truth["video"], truth["source_mask"]
        else:
            if not (args.source_video and args.source_mask):
                raise InputError("--task rv2av needs --source_video and --source_mask (white = region to regenerate)")
            video = load_frames(args.source_video, world.frames, world.image_size, "--source_video")
            mask = load_frames(args.source_mask, world.frames, world.image_size, "--source_mask")
            mask = (mask.mean(1, keepdim=True) > 0).float()  # (T, 1, H, W): white = regenerate
        # (1, T, C+1, H, W): the masked-out video plus the mask as a channel, as in training
        return torch.cat([video * (1 - mask), mask], dim=1)[None], None
    if args.task == "ra2v":
        if truth is not None:
            return None, truth["audio"][None]
        if not args.driving_audio:
            raise InputError("--task ra2v needs --driving_audio (a .wav)")
        wav = load_wav(args.driving_audio, world.sample_rate, world.samples / world.sample_rate + 0.1,
                       "--driving_audio")[: world.samples]
        wav = torch.nn.functional.pad(wav, (0, world.samples - wav.numel()))  # exactly one clip long
        return None, speech.wav_to_mel(wav, world)[None]
    return None, None


def demo_case(world: data.WorldConfig, seed: int) -> dict:
    """A built-in toy case from a held-out stream (2 = never used by training): caption, refs, truth."""
    return data.make_clip(data.sample_rng(seed, 2, 0, 0), world)


def latent_case(path: str, index: int, cfg: build.ModelConfig):
    """A real-data case: sample `index` of a latent shard (shards.py's format) -> (Conditioning, video shape,
    audio shape). For Ovi-size models, which read VAE latents and umT5 features rather than the toy world."""
    import shards  # real data only; the toy path never needs it
    try:
        shard = shards.LatentShards.load(path, shards.spec_for(cfg))
    except shards.ShardError as e:
        raise InputError(str(e)) from None
    n = shard["video"].shape[0]
    if not 0 <= index < n:
        raise InputError(f"--latent_index {index}: {path} holds samples 0..{n - 1}")
    one = {k: v[index: index + 1] for k, v in shard.items()}  # a batch of one, every field keeps its batch axis
    return Conditioning.from_batch(one), tuple(one["video"].shape), tuple(one["audio"].shape)


def flag_problems(args) -> list[str]:
    """Flag values that cannot make a sample, one line each; checked before any model work (a bad --out_dir
    used to be found only after sampling had finished)."""
    problems = []
    if args.steps < 1:
        problems.append(f"--steps must be at least 1, got {args.steps}")
    if args.seed < 0:
        problems.append(f"--seed must be 0 or more, got {args.seed}")
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
    parser.add_argument("--guidance", choices=["plain", "multi", "presence", "none"], default=None,
                        help="plain: Ovi's per-modality CFG; multi: DreamID-Omni's 4-pass form; presence: "
                             "Identity-as-Presence's (face kept in the negative). Default: presence for a presence "
                             "checkpoint, else plain")
    parser.add_argument("--ref_mode", choices=["concat", "presence"], default=None,
                        help="how the checkpoint takes references (it knows; give it to check)")
    defaults = Guidance()
    for field in dataclasses.fields(Guidance):
        if field.name != "mode":
            parser.add_argument(f"--{field.name}", type=float, default=getattr(defaults, field.name),
                                help=f"guidance scale ({field.name.split('_')[0].replace('cfg', 'plain').replace('mc', 'multi')})")
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


def toy_case(args, world: data.WorldConfig):
    """(caption, batch of one, Conditioning, truth or None) from --demo or the user's caption and files."""
    truth = None
    if args.demo:  # a held-out toy case: its caption and references, and its own clip to compare with
        truth = demo_case(dataclasses.replace(world, scene=args.scene), args.seed)
        caption = truth["caption"]
        batch = data.collate([{k: truth[k] for k in ("text_ids", "subject_spans", "speech_spans", "line_speaker",
                                                      "line_phonemes", "ref_images", "ref_audio")}])
    else:
        if not args.caption:
            raise InputError("give --caption with --ref_image/--ref_audio per subject, or --demo")
        caption = args.caption
        batch = prepare_inputs(caption, args.ref_image, args.ref_audio, world)
    source_video, driving_audio = task_condition(args, world, truth)
    cond = Conditioning.from_batch(batch, source_video, driving_audio)
    return caption, batch, motion_request(args, cond, world, truth), truth


def motion_request(args, cond: Conditioning, world: data.WorldConfig, truth: dict | None) -> Conditioning:
    """DreamVideo-Omni: the boxes and tracked points asked for (--motion JSON; --demo: the world's own), as
    fractions of the frame. A model without motion control ignores them; the page draws them anyway."""
    if args.motion:
        boxes, points = load_motion(args.motion, cond.subjects, world.frames)
    elif truth is not None:
        size = torch.tensor([world.image_size, world.image_size], dtype=torch.float)
        boxes, points = truth["boxes"][None] / size.repeat(2), truth["trajectories"][None] / size
    else:  # a user's caption without --motion: nothing to ask for
        return cond
    return dataclasses.replace(cond, boxes=boxes, trajectories=points)  # boxes (1, K, T, 4), points (1, K, T, P, 2)


def draw_motion(frames: np.ndarray, boxes: torch.Tensor, points: torch.Tensor, scale: int = 6):
    """The requested boxes (outlines) and tracked points (dots) over the frames, one colour per subject:
    (T, H, W, 3) uint8 -> list of enlarged PIL images."""
    from PIL import Image, ImageDraw
    colours = [(255, 60, 60), (60, 160, 255), (255, 210, 0), (80, 220, 120)]  # subject k: colours[k % 4]
    T, H, W, _ = frames.shape
    out = []
    for t in range(T):
        img = Image.fromarray(frames[t]).resize((W * scale, H * scale), Image.NEAREST)
        pen = ImageDraw.Draw(img)
        for k in range(boxes.shape[0]):
            x0, y0, x1, y1 = (boxes[k, t] * torch.tensor([W, H, W, H]) * scale).tolist()  # fractions -> pixels
            if x1 > x0 and y1 > y0:  # an empty box: the subject is off screen in this frame, nothing to draw
                pen.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colours[k % 4], width=2)
                for x, y in (points[k, t] * torch.tensor([W, H]) * scale).tolist():
                    pen.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colours[k % 4])
        out.append(img)
    return out


def guidance_for(args, mcfg: build.ModelConfig) -> Guidance:
    """The --guidance form and scales; by default the one the checkpoint's kind of model was released with."""
    if args.ref_mode and args.ref_mode != mcfg.ref_mode:
        raise InputError(f"--ref_mode {args.ref_mode}: {args.ckpt} was trained with ref_mode {mcfg.ref_mode}")
    mode = args.guidance or ("presence" if mcfg.ref_mode == "presence" else "plain")
    return Guidance(mode=mode, **{f.name: getattr(args, f.name) for f in dataclasses.fields(Guidance) if f.name != "mode"})


def main():
    args = parse_args()
    regime = precision_lib.resolve(args.precision, args.device)
    precision_lib.enable_tf32(args.device)
    run = dict(steps=args.steps, shift=args.shift, seed=args.seed, solver=args.solver, device=args.device,
               keep_source=args.keep_source, precision=regime)
    try:  # every input problem ends here as one line, before any model work
        # real data (Ovi's weights or a latent shard) has no toy world: its own path, which writes latents
        if checkpoint.is_ovi_checkpoint(args.ckpt) or args.latent_cond:
            run["shift"] = args.shift or (trained_shift(None) if checkpoint.is_ovi_checkpoint(args.ckpt)
                                          else trained_shift(checkpoint.load_checkpoint(args.ckpt)))
            run["guidance"] = guidance_for(args, build.PRESETS["full"] if checkpoint.is_ovi_checkpoint(args.ckpt)
                                           else checkpoint.config_from_checkpoint(checkpoint.load_checkpoint(args.ckpt)))
            return sample_latents(args, run)
        ckpt = checkpoint.load_checkpoint(args.ckpt, need=("world_config",))
        run["shift"] = args.shift or trained_shift(ckpt)
        world = checkpoint.dataclass_from_checkpoint(data.WorldConfig, ckpt["world_config"], args.ckpt,
                                                     data.world_problems)  # sizes, rates and mel settings the model knows
        caption, batch, cond, truth = toy_case(args, world)  # inputs before weights: a bad file fails fast
        run["guidance"] = guidance_for(args, checkpoint.config_from_checkpoint(ckpt, args.ckpt))
        net = checkpoint.model_from_checkpoint(args.ckpt, use_ema=not args.no_ema, device=args.device,
                                           dtype=precision_lib.compute_dtype(regime))
        if args.merge_lora:
            print(f"merged {lora.merge(net)} LoRA adapters into their base weights")
    except (InputError, checkpoint.CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    video, audio = sample(net, cond, (1, world.frames, 3, world.image_size, world.image_size),
                          (1, world.mel_frames, world.n_mels), **run)
    if cond.driving_audio is not None:  # RA2V: the sound is the given track
        audio = cond.driving_audio
    motion = None if cond.boxes is None else (cond.boxes[0], cond.trajectories[0])  # drawn over the result
    write_outputs(args.out_dir, video[0].cpu(), audio[0].cpu(), world, caption, batch["ref_images"][0],
                  batch["ref_audio"][0], truth, motion)
    print(f"caption: {caption}")
    print(f"wrote {args.out_dir}/index.html (video.gif, audio.wav{', video.mp4' if os.path.exists(os.path.join(args.out_dir, 'video.mp4')) else ''})")


def sample_latents(args, run: dict):
    """Real data: sample the conditioning of a latent shard and save the latents (decode them with the
    Wan2.2 VAE and the MMAudio VAE, which this repository does not ship)."""
    if not args.latent_cond:
        raise InputError(f"{args.ckpt} is a latent model (Ovi): give --latent_cond SHARD.pt with the umT5 prompt "
                         "features and reference latents to sample (shards.py's format)")
    net = checkpoint.model_from_checkpoint(args.ckpt, use_ema=not args.no_ema, device=args.device,
                                           dtype=precision_lib.compute_dtype(run["precision"]))
    cond, video_shape, audio_shape = latent_case(args.latent_cond, args.latent_index, net.cfg)
    video, audio = sample(net, cond, video_shape, audio_shape, **run)
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "latents.pt")
    torch.save(dict(video=video[0].cpu(), audio=audio[0].cpu()), path)
    print(f"wrote {path}: video latents {tuple(video.shape[1:])}, audio latents {tuple(audio.shape[1:])}")


if __name__ == "__main__":
    main()
