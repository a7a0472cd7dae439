"""A folder of the user's clips -> latent shards (shards.py's format) that `train.py --config full` reads.

Every peer trainer ships this step (LTX-2's process_dataset.py, musubi-tuner's cache scripts): the encoders run
once, here, and training reads their outputs. Per clip, in Ovi's format (encoders.py):

    video   24 fps, 121 frames (5 s), resized and centre-cropped to the nearest aspect bucket (sides multiples
            of 32, about --area pixels) -> Wan2.2 VAE latents (31, 48, H/16, W/16), normalised per channel
    audio   16 kHz mono, 80,384 samples -> MMAudio VAE latents (157, 20)
    text    the structured caption -> umT5 features (512, 4096) and mask; each <subk> descriptor's and each
            <S> ... <E> line's span in umT5 token indices; each line's characters for MTP-CA
    refs    per subject: its image resized to the clip's bucket -> one latent frame; its voice (up to 5 s) ->
            audio latents

The folder (one stem per clip; subjects numbered as the caption's <subk>):

    clips/talk01.mp4        the clip with its sound (anything PyAV reads: .mp4 .mov .mkv .webm .avi)
    clips/talk01.txt        its caption, e.g. "the man in grey <sub1>: short hair, low voice. <sub1> says <S> Hi. <E>"
    clips/talk01.sub1.png   subject 1's reference image (.png .jpg .jpeg .webp)
    clips/talk01.sub1.wav   subject 1's reference voice (.wav)

    python prepare.py --clips clips/ --out shards/ --video_vae ckpt/wan22_vae --text_encoder ckpt/umt5-xxl \\
        --audio_vae ckpt/MMAudio/ext_weights/v1-16.pth
    torchrun --nproc_per_node=8 prepare.py ...      # clips split over the ranks

A clip that cannot be used (unreadable, shorter than 5 s, no or silent sound, a caption that breaks the
structure, a missing reference) is skipped with one line, and a summary ends the run. Finished clips are
listed in out/done-r{rank}.jsonl and skipped when the command is run again. out/negative.pt holds Ovi's
negative prompts encoded once (sample.py's guidance uses them instead of zeros). Latents and features are
stored in bf16 (shards.py reads any float dtype as fp32), about 10 MB a clip at 704x704.
"""
from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import caption as caption_lib
import checkpoint
import encoders
import inputs
import shards
from cli import OneLineParser

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
ASPECTS = (1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16)     # the buckets' width / height
SILENCE_RMS = 1e-3                                 # -60 dBFS: a track this quiet has nothing to learn from
MAX_LINE_CHARS = 256                               # MTP-CA's phoneme stream per line
OVI_NEGATIVE = dict(video="jitter, bad hands, blur, distortion",     # Ovi's inference_fusion.yaml defaults
                    audio="robotic, muffled, echo, distorted")


class ClipError(ValueError):
    """This clip cannot be used; the message says why, in one line, and the run goes on with the others."""


# ------------------------------------------------------------------------------------------------
# Finding a clip's files
# ------------------------------------------------------------------------------------------------


def find_clips(folder: str) -> list[str]:
    """Stems of the clips in `folder` (files with a video extension), sorted."""
    return sorted({os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(folder, "*"))
                   if p.lower().endswith(VIDEO_EXTS)})


def one_file(folder: str, stem: str, exts, what: str) -> str:
    found = [os.path.join(folder, stem + e) for e in exts if os.path.isfile(os.path.join(folder, stem + e))]
    if not found:
        raise ClipError(f"no {what} ({stem}{'|'.join(exts)})")
    return found[0]


def clip_files(folder: str, stem: str) -> dict:
    """The clip's video, caption text, and per subject its reference image and voice."""
    video = one_file(folder, stem, VIDEO_EXTS, "video")
    with open(one_file(folder, stem, (".txt",), "caption"), encoding="utf-8") as f:
        text = f.read()
    try:
        structure = caption_lib.text_structure(encoders.clean_prompt(text))
    except caption_lib.CaptionError as e:
        raise ClipError(str(e)) from None
    k = len(structure["subject_spans"])
    images = [one_file(folder, f"{stem}.sub{i + 1}", IMAGE_EXTS, f"reference image for <sub{i + 1}>") for i in range(k)]
    voices = [one_file(folder, f"{stem}.sub{i + 1}", (".wav",), f"reference voice for <sub{i + 1}>") for i in range(k)]
    return dict(video=video, text=text, structure=structure, images=images, voices=voices)


# ------------------------------------------------------------------------------------------------
# Reading a clip: frames at 24 fps in a bucket, sound at 16 kHz
# ------------------------------------------------------------------------------------------------


def bucket(height: int, width: int, area: int) -> tuple[int, int]:
    """The aspect bucket nearest the clip's: (H, W), multiples of 32, H * W about `area` (Ovi's snap to 32)."""
    aspect = min(ASPECTS, key=lambda a: abs(np.log(a * height / width)))   # nearest in ratio, not difference
    h = max(32, round((area / aspect) ** 0.5 / 32) * 32)   # h * w = area and w / h = aspect, each snapped to 32
    w = max(32, round((area * aspect) ** 0.5 / 32) * 32)   # (Wan's 16-pixel latents, then the model's 2x2 patch)
    return h, w


def fit(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., 3, h, w) in [0, 1] -> (..., 3, H, W): scaled to cover the bucket, then centre-cropped."""
    H, W = size
    h, w = image.shape[-2:]
    scale = max(H / h, W / w)                              # cover: the short side fits, the long one is cropped
    nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
    flat = image.reshape(-1, 3, h, w)                      # frames, or one image: (N, 3, h, w)
    # antialias: a 1080p source shrinks ~2.5x to 704, and plain bilinear would alias fine texture
    flat = F.interpolate(flat, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - H) // 2, (nw - W) // 2               # the centre
    return flat[..., top: top + H, left: left + W].reshape(*image.shape[:-2], H, W).clamp(0, 1)


def read_frames(container, area: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """The first 121 frames at 24 fps: for each time i / 24, the last source frame shown at that time (a 30 fps
    source drops frames, a 12 fps one repeats them) -> (121, 3, H, W) in [0, 1] in the clip's bucket."""
    stream = container.streams.video[0]
    size = bucket(stream.codec_context.height, stream.codec_context.width, area)
    targets = [i / encoders.FPS for i in range(encoders.CLIP_FRAMES)]
    kept, prev, last_time = [], None, 0.0
    for frame in container.decode(stream):
        t = frame.time if frame.time is not None else last_time
        while len(kept) < len(targets) and t > targets[len(kept)] + 1e-6:
            kept.append(prev if prev is not None else frame)   # a stream that starts late: its first frame
        if len(kept) == len(targets):
            break
        prev, last_time = frame, t
    rate = float(stream.average_rate or encoders.FPS)
    while prev is not None and len(kept) < len(targets) and targets[len(kept)] < last_time + 1 / rate:
        kept.append(prev)                                       # the last frame lasts one source frame
    if len(kept) < len(targets):
        raise ClipError(f"the video is {last_time + 1 / rate:.2f} s; Ovi's clips are {len(targets) / encoders.FPS:.2f} s")
    rgb = np.stack([f.to_ndarray(format="rgb24") for f in kept])                          # (121, h, w, 3)
    return fit(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255, size), size


def read_sound(container) -> torch.Tensor:
    """The first 80,384 samples at 16 kHz mono (PyAV's resampler): exactly 157 audio latents."""
    import av
    if not container.streams.audio:
        raise ClipError("the video has no sound track")
    # FFmpeg's resampler: any rate and layout -> float32 mono at 16 kHz (channels averaged by its downmix)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=encoders.SAMPLE_RATE)
    chunks, n = [], 0
    for frame in container.decode(container.streams.audio[0]):
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().reshape(-1))
            n += chunks[-1].size
        if n >= encoders.AUDIO_SAMPLES:
            break
    for out in resampler.resample(None):                        # flush what the resampler holds back
        chunks.append(out.to_ndarray().reshape(-1))
    wave = torch.from_numpy(np.concatenate(chunks) if chunks else np.zeros(0, np.float32))
    if wave.numel() < encoders.AUDIO_SAMPLES:
        raise ClipError(f"the sound is {wave.numel() / encoders.SAMPLE_RATE:.2f} s; Ovi's clips need "
                        f"{encoders.AUDIO_SAMPLES / encoders.SAMPLE_RATE:.3f} s")
    wave = wave[: encoders.AUDIO_SAMPLES]                      # the clip's first 5.024 s
    if wave.pow(2).mean().sqrt() < SILENCE_RMS:                # rms over the kept stretch
        raise ClipError("the sound track is silent (below -60 dBFS)")
    return wave


def read_clip(path: str, area: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(frames (121, 3, H, W) in [0, 1], wave (80384,), bucket) of a video file with sound."""
    import av
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ClipError("the file has no video stream")
            frames, size = read_frames(container, area)
        with av.open(path) as container:                          # a second pass: sound, from the start
            wave = read_sound(container)
    except av.error.FFmpegError as e:
        raise ClipError(f"PyAV cannot read it ({type(e).__name__})") from None
    return frames, wave, size


# ------------------------------------------------------------------------------------------------
# Encoding one clip into a shard row
# ------------------------------------------------------------------------------------------------


def reference_image(path: str, size: tuple[int, int]) -> torch.Tensor:
    """A reference image -> (3, H, W) in [0, 1] in the clip's bucket."""
    try:
        img = inputs.open_image(path, "reference image").convert("RGB")
    except inputs.InputError as e:
        raise ClipError(str(e)) from None
    except OSError:
        raise ClipError(f"reference image {path}: truncated or corrupt") from None
    return fit(torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1), size)


def reference_voice(path: str) -> torch.Tensor:
    """A reference voice -> (80384,) at 16 kHz: its first 5.024 s, zero-padded when shorter."""
    try:
        wave = inputs.load_wav(path, encoders.SAMPLE_RATE, max_seconds=encoders.AUDIO_SAMPLES / encoders.SAMPLE_RATE,
                               flag="reference voice")
    except inputs.InputError as e:
        raise ClipError(str(e)) from None
    return F.pad(wave.float(), (0, encoders.AUDIO_SAMPLES - wave.numel()))[: encoders.AUDIO_SAMPLES]


def caption_row(enc: encoders.Encoders, text: str, structure: dict) -> dict:
    """umT5 features and mask, the spans in umT5 tokens, and each line's speaker and characters."""
    clean = encoders.clean_prompt(text)
    emb, mask = enc.text.encode(clean)
    lines, k = structure["lines"], len(structure["subject_spans"])
    spans = enc.text.token_spans(clean, structure["subject_spans"] + [ln["span"] for ln in lines])  # one tokenizing
    phonemes = torch.nn.utils.rnn.pad_sequence(   # (M, P): each line's characters, 0-padded to the longest
        [torch.tensor(caption_lib.character_ids(ln["text"])[:MAX_LINE_CHARS]) for ln in lines], batch_first=True)
    return dict(text_emb=emb, text_mask=mask, subject_spans=torch.tensor(spans[:k]), speech_spans=torch.tensor(spans[k:]),
                line_speaker=torch.tensor([ln["speaker"] for ln in lines]),
                line_mask=torch.ones(len(lines), dtype=torch.bool), line_phonemes=phonemes)


def encode_references(enc: encoders.Encoders, images: list, voices: list, size: tuple[int, int]) -> dict:
    """Per subject: one latent frame of its image, the audio latents of its voice."""
    # one image is a one-frame clip: Wan's causal VAE gives it one latent frame, (1, 1, 48, h, w) -> (48, h, w)
    ref_images = torch.stack([enc.video.encode(reference_image(p, size)[None, None])[0, 0] for p in images])
    ref_audio = torch.stack([enc.audio.encode(reference_voice(p)[None])[0] for p in voices])   # (K, 157, 20)
    return dict(ref_images=ref_images, ref_audio=ref_audio, subject_mask=torch.ones(len(images), dtype=torch.bool))


def encode_clip(enc: encoders.Encoders, files: dict, area: int) -> dict:
    """One shard row (every field without the sample axis)."""
    frames, wave, size = read_clip(files["video"], area)
    row = dict(video=enc.video.encode(frames[None])[0], audio=enc.audio.encode(wave[None])[0])
    row.update(caption_row(enc, files["text"], files["structure"]))
    row.update(encode_references(enc, files["images"], files["voices"], size))
    return row


def stack_rows(rows: list[dict]) -> dict:
    """Rows -> one shard: subjects, lines and characters padded to the longest (masks False, ids 0), floats bf16."""
    shard = {}
    for key in rows[0]:
        parts = [r[key] for r in rows]
        longest = [max(p.shape[d] for p in parts) for d in range(parts[0].ndim)]
        padded = []
        for p in parts:  # F.pad's list runs from the last dimension backwards
            pad = [x for d in reversed(range(p.ndim)) for x in (0, longest[d] - p.shape[d])]
            padded.append(F.pad(p, pad) if any(pad) else p)
        value = torch.stack(padded)                            # (N, ...) with the longest row's sizes
        # bf16 halves the disk (umT5's 512 x 4096 features are 4 MB a clip); the loader reads them as fp32
        shard[key] = value.to(torch.bfloat16) if key in shards.FLOAT_FIELDS else value
    return shard


# ------------------------------------------------------------------------------------------------
# The run: clips split over ranks, shards per bucket, resumable
# ------------------------------------------------------------------------------------------------


def done_clips(out: str) -> set:
    """Stems already in a written shard (every rank's done-r*.jsonl)."""
    done = set()
    for path in glob.glob(os.path.join(out, "done-r*.jsonl")):
        with open(path) as f:
            done |= {json.loads(line)["clip"] for line in f if line.strip()}
    return done


def clips_of_rank(stems: list[str], done: set, rank: int, world: int) -> list[str]:
    """This rank's share: every world-th clip of the sorted list, from its rank on, less those already done.
    The split depends on the folder alone, so a rerun with the same ranks gives each rank the same clips."""
    return [s for i, s in enumerate(stems) if i % world == rank and s not in done]


def flush(out: str, rank: int, size: tuple[int, int], pending: list, counter: dict):
    """Write a bucket's pending rows as one shard (atomically), then record its clips as done."""
    n = counter[size] = counter.get(size, 0) + 1
    # the first clip's stem in the name: a rerun's shards never overwrite an earlier run's
    name = f"shard-r{rank}-{size[0]}x{size[1]}-{n:04d}-{pending[0][0]}.pt"
    checkpoint.save_atomic(stack_rows([row for _, row in pending]), os.path.join(out, name))
    with open(os.path.join(out, f"done-r{rank}.jsonl"), "a") as f:
        for stem, _ in pending:
            f.write(json.dumps(dict(clip=stem, shard=name)) + "\n")
    pending.clear()


def write_negative(enc: encoders.Encoders, out: str):
    """Ovi's negative prompts, encoded once: sample.py's unconditional passes read them."""
    path = os.path.join(out, "negative.pt")
    if not os.path.exists(path):
        encoded = {k: enc.text.encode(p) for k, p in OVI_NEGATIVE.items()}
        checkpoint.save_atomic({f"{k}_{part}": v[i] for k, v in encoded.items()
                                for i, part in enumerate(("emb", "mask"))} | {"prompts": dict(OVI_NEGATIVE)}, path)


def prepare(args) -> dict:
    """Encode every clip of this rank not yet done; returns the counts and the skipped clips' reasons."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() and args.device == "cuda" \
        else "cpu"
    enc = encoders.Encoders(args.video_vae, args.text_encoder, args.audio_vae, device=device,
                            dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
    enc.require("video", "text", "audio")
    os.makedirs(args.out, exist_ok=True)
    if rank == 0:
        write_negative(enc, args.out)
    stems = find_clips(args.clips)
    done = done_clips(args.out)
    mine = clips_of_rank(stems, done, rank, world)
    pending, counter, skipped, encoded = {}, {}, {}, 0
    for stem in tqdm(mine, desc=f"prepare r{rank}", disable=rank != 0):
        try:
            row = encode_clip(enc, clip_files(args.clips, stem), args.area)
        except (ClipError, encoders.EncoderError) as e:
            skipped[stem] = str(e)
            tqdm.write(f"skip {stem}: {e}")
            continue
        size = tuple(row["video"].shape[-2:])                  # the bucket, on the latent grid
        pending.setdefault(size, []).append((stem, row))       # a shard holds one bucket: its shapes agree
        encoded += 1
        if len(pending[size]) == args.per_shard:
            flush(args.out, rank, size, pending[size], counter)
    for size, rows in pending.items():
        if rows:
            flush(args.out, rank, size, rows, counter)
    return dict(clips=len(stems), already=len(done), encoded=encoded, skipped=skipped)


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", required=True, help="the folder of clips (layout: prepare.py's docstring, README)")
    p.add_argument("--out", required=True, help="where the shards go (rerunning skips the clips already there)")
    p.add_argument("--video_vae", required=True, help="Wan2.2's VAE in diffusers' layout (AutoencoderKLWan folder)")
    p.add_argument("--text_encoder", required=True, help="umT5-XXL in transformers' layout, with its tokenizer")
    p.add_argument("--audio_vae", required=True, help="MMAudio's ext_weights/v1-16.pth")
    p.add_argument("--area", type=int, default=720 * 720, help="frame area in pixels (Ovi's 720x720_5s: 518400)")
    p.add_argument("--per_shard", type=int, default=16, help="clips per shard file")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where the encoders run")
    args = p.parse_args(argv)
    if args.per_shard < 1 or args.area < 32 * 32:
        p.exit(2, "error: --per_shard must be at least 1 and --area at least 1024 pixels\n")
    if not os.path.isdir(args.clips):
        p.exit(2, f"error: --clips {args.clips}: no such folder\n")
    return args


def main():
    args = parse_args()
    try:
        result = prepare(args)
    except encoders.EncoderError as e:
        raise SystemExit(f"error: {e}") from None
    rank = os.environ.get("RANK", "0")
    print(f"prepare r{rank}: {result['clips']} clips in {args.clips}, {result['already']} done before, "
          f"{result['encoded']} encoded now, {len(result['skipped'])} skipped -> {args.out}")
    for stem, why in result["skipped"].items():
        print(f"  skipped {stem}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
