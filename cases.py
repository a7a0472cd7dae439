"""What sample.py generates for: the case (caption, references, task inputs, motion request) as a Conditioning.

  a user's case     --caption with one --ref_image and --ref_audio per <subk>: read through inputs.py, every
                    problem one line (InputError)
  the demo          --demo: a held-out toy case (a stream training never reads), with its own clip to compare
  a latent case     --latent_cond SHARD.pt: sample i of a latent shard (shards.py), for Ovi-size models
  task inputs       DreamID-Omni's RV2AV source video + mask, RA2V driving audio (--task)
  motion request    DreamVideo-Omni's boxes and tracked points (--motion JSON; --demo: the world's own)
"""
from __future__ import annotations

import dataclasses

import torch

import build
import data
import speech
from caption import CaptionError, caption_fields
from conditioning import Conditioning
from inputs import InputError, load_frames, load_image, load_motion, load_wav


def subjects_named(n: int) -> str:
    return {0: "no subject", 1: "1 subject (<sub1>)"}.get(n, f"{n} subjects (<sub1>..<sub{n}>)")


def prepare_inputs(caption: str, image_paths: list[str], audio_paths: list[str], world: data.WorldConfig) -> dict:
    """Caption + reference files -> a batch of one (the same keys as a training batch). Without any reference
    file it is text-to-audio-video (Ovi's own use): each subject is drawn from its description alone, its
    references absent (zeros here, masked out by `toy_case`, as guidance's dropped references are)."""
    try:
        fields = caption_fields(caption, world.tokenizer)  # the tokenizer the model was trained with
    except CaptionError as e:
        raise InputError(f"--caption: {e}") from None
    n = len(fields["subject_spans"])
    if image_paths or audio_paths:
        for flag, paths in (("--ref_image", image_paths), ("--ref_audio", audio_paths)):
            if len(paths) != n:
                given = f"{len(paths)} {flag} {'was' if len(paths) == 1 else 'were'} given"
                raise InputError(f"the caption names {subjects_named(n)} but {given}: give one per subject, in "
                                 "<sub1>, <sub2> order (or none at all: text-to-audio-video)")
    else:
        return data.collate([dict(fields, ref_images=torch.zeros(n, 3, world.ref_image_size, world.ref_image_size),
                                  ref_audio=torch.zeros(n, world.ref_mel_frames, world.n_mels))])
    ref_len = world.ref_mel_frames * world.hop  # the model was trained on voice clips of exactly this length
    voices = []
    for p in audio_paths:
        wav = load_wav(p, world.sample_rate, max_seconds=ref_len / world.sample_rate + 0.1)[:ref_len]
        voices.append(torch.nn.functional.pad(wav, (0, ref_len - wav.numel())))  # cut / pad to the ref length
    sample = dict(fields, ref_images=torch.stack([load_image(p, world.ref_image_size) for p in image_paths]),
                  ref_audio=speech.wav_to_mel(torch.stack(voices), world))
    return data.collate([sample])


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
            raise InputError("give --caption (with --ref_image/--ref_audio per subject, or none), or --demo")
        caption = args.caption
        batch = prepare_inputs(caption, args.ref_image, args.ref_audio, world)
    source_video, driving_audio = task_condition(args, world, truth)
    cond = Conditioning.from_batch(batch, source_video, driving_audio)
    if not (truth is not None or args.ref_image or args.ref_audio):  # text-to-audio-video: no references at all
        cond = cond.drop_references(torch.ones(1, dtype=torch.bool))
        batch = dict(batch, ref_images=batch["ref_images"][:, :0], ref_audio=batch["ref_audio"][:, :0])  # none to show
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
