"""The toy world: a seeded, procedural world of talking subjects whose ground truth is known exactly.

Every paper implemented here (Omni-Customizer, DreamID-Omni, Identity-as-Presence, DreamVideo-Omni) trains on curated real clips (OpenHumanVid, OpenS2V, Emilia). None of
those can be downloaded here, and a reader should watch the method work in minutes on a laptop CPU.
So this file *generates* that data pipeline in miniature; each mechanism of the papers has something
real to bind to:

  identity (face)   a 32x32 cartoon person: skin tone (continuous), hair and shirt colour (a 12-colour palette,
                    jittered, so the caption's colour words are true), hair style,
                    face shape, glasses. Every identity is a fresh draw, so test identities are unseen.
  identity (voice)  a source-filter voice: pitch, vocal-tract scale (formant shift), brightness
                    (spectral tilt), prosody (pitch wobble). 16 kHz mono.
  speech            17 phonemes written as letters (vowels with formant patterns, nasals, liquids,
                    fricatives, bursts). Language A speaks {a e i o u m n l s t k}, language B
                    {a o y r f p h z n}. Paired clips are mostly A, the audio-only corpus mostly B.
  lip sync          a speaker's mouth opening per frame = its own speech energy x vowel openness;
                    silent subjects keep their mouths shut; off-screen speakers are heard, not seen.
  scenes            1-3 subjects that may drift (boxes and trajectories kept per frame), dialogue
                    turns, a room with a colour, a texture and its own faint hum.
  captions          the structured form of Omni-Customizer Eq. 2 / DreamID-Omni (caption.py): one
                    descriptor per subject "label <subk>: looks, voice.", the scene and actions, then each
                    line as "<subk> says <S> ... <E>". Every letter of the caption is pronounceable (b->p,
                    d->t, ...), so a model that wrongly speaks the caption ("caption vocalization")
                    can be heard doing it by the benchmark's phoneme recogniser.
  references        per subject, in the order <sub1>, <sub2>...: a 16x16 head-and-shoulders
                    portrait and a 1 s voice clip. In-pair: cropped from a frame / cut from the
                    clip's own audio. Cross-pair: re-rendered in another pose, scale, position,
                    mouth state and background; the same voice saying other words.
  tasks             RV2AV source video (subject boxes masked out) and RA2V driving audio (DreamID-Omni).

The speech itself (phonemes, languages, voices, log-mel) is its own concept: speech.py.

Sizes (WorldConfig): 32x32 RGB, 8 fps, 2 s clips (16 frames); 16 kHz audio; log-mel with
n_fft=512, hop=250 (64 mel frames per second = exactly 8 per video frame), 40 mel bins 0-8 kHz,
normalised as (ln(mel + 1e-5) - MEL_MEAN) / MEL_STD so values sit roughly in [-1.5, 2].
speech.mel_to_wav inverts it (torchaudio InverseMelScale + Griffin-Lim) so generated mel can be heard.

Loading: `ToyBatches` is an infinite IterableDataset of collated batches. Sample i of rank r is
generated from the seed sequence (seed, stream, r, i) alone, so the stream is identical for any
number of DataLoader workers, distinct per rank, and resumable from a batch index.

Real data (precomputed latents) is its own concept: shards.py.
`python data.py --out_dir preview/` writes pictures and sounds of the world for a person.
"""
from __future__ import annotations

import dataclasses
import math
import os
import zlib
from dataclasses import dataclass

import numpy as np
import torch

import speech  # the toy's speech: phonemes, languages, voices, log-mel
from caption import PAD_ID, VOCABS, caption_fields, tokenize
from conditioning import box_masks

# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclass
class WorldConfig:
    image_size: int = 32          # frames are image_size x image_size RGB
    fps: int = 8                  # video frames per second
    clip_seconds: float = 2.0     # clip length
    sample_rate: int = 16000      # audio samples per second
    n_fft: int = 512              # log-mel STFT window
    hop: int = 250                # 16000 / 250 = 64 mel frames/s, 8 per video frame at 8 fps
    n_mels: int = 40              # mel bins (the audio stream's channels)
    ref_image_size: int = 16      # reference portraits: head and shoulders, 16x16
    ref_audio_seconds: float = 1.0  # length of each reference voice clip
    # --- what scenes look like (the curriculum in train.py switches these per stage) ---
    scene: str = "mixed"          # mixed | single | dialogue | complex (complex = OC-Bench subset 3)
    min_subjects: int = 1         # people per scene, at least (scene=mixed)
    max_subjects: int = 3         # people per scene, at most
    cross_pair: float = 0.0       # probability that a sample's references are cross-pair
    lang_b: float = 0.1           # share of language-B lines in paired clips
    lang_b_audio_only: float = 0.8  # share of language B in the audio-only corpus
    silent_prob: float = 0.2      # a subject of a multi-subject scene stays silent
    offscreen_prob: float = 0.1   # a speaking subject of a multi-subject scene is off screen
    move_prob: float = 0.5        # a subject drifts across the frame
    camera_pan: float = 0.0       # a clip's camera pans sideways: the room and everyone in it shift together
    anchors: bool = True          # <subk> anchors tie descriptors and lines to reference k (DreamID-Omni's
                                  # structured captions); False: the model reads people named by label alone
    tokenizer: str = "pairs"      # caption tokens (caption.py): pairs (letter pairs, half the tokens) | chars
    nicknames: bool = False       # each descriptor adds "called <a word of language A>": a caption built to tempt
                                  # caption vocalization (the ablation tables' MTP-CA probe); pictures, sound unchanged
    timing_spread: float = 1.0    # how much speech timing varies, as a multiple of the world's spreads: speaking
                                  # rate 1 +- 0.15, a clip's first line starting 0.05-0.2 s in (0.05-0.25 alone),
                                  # 0.08-0.2 s between lines; 0 = rate 1, first line at 0.05 s, 0.08 s between
                                  # lines, so when each phoneme sounds follows from the script alone (issue 24's
                                  # alignment experiment; docs/experiments.md)

    @property
    def frames(self) -> int:
        return round(self.clip_seconds * self.fps)

    @property
    def samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def mel_frames(self) -> int:
        return self.samples // self.hop

    @property
    def ref_mel_frames(self) -> int:
        return round(self.ref_audio_seconds * self.sample_rate) // self.hop


SCENES = ("mixed", "single", "dialogue", "complex")


def world_problems(cfg: WorldConfig) -> list[str]:
    """Every field value that cannot make a world, one line each, named as its command-line flag."""
    problems = []
    for name in ("image_size", "fps", "n_mels", "ref_image_size", "hop"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    if not (8000 <= cfg.sample_rate <= 48000 and 0 < cfg.hop < cfg.n_fft <= cfg.sample_rate):
        problems.append(f"--sample_rate must be 8000-48000 Hz and --hop < --n_fft; got {cfg.sample_rate}, "
                        f"{cfg.hop}, {cfg.n_fft}")
    if not (cfg.clip_seconds > 0 and cfg.ref_audio_seconds > 0 and cfg.frames >= 1 and cfg.ref_mel_frames >= 1):
        problems.append(f"--clip_seconds and --ref_audio_seconds must hold at least a frame; got {cfg.clip_seconds}, "
                        f"{cfg.ref_audio_seconds}")
    if not 1 <= cfg.min_subjects <= cfg.max_subjects <= 3:  # the tokenizer knows 4 anchors; scenes lay out 3 people
        problems.append("--min_subjects and --max_subjects need 1 <= min <= max <= 3 (the toy world's scenes hold 3); "
                        f"got {cfg.min_subjects}, {cfg.max_subjects}")
    for name in ("cross_pair", "lang_b", "lang_b_audio_only", "silent_prob", "offscreen_prob", "move_prob",
                 "camera_pan"):
        if not 0 <= getattr(cfg, name) <= 1:
            problems.append(f"--{name} is a probability, in [0, 1]; got {getattr(cfg, name)}")
    if not 0 <= cfg.timing_spread <= 3:  # past 3 a speaking rate could reach zero or below (1 - 0.15 x 6.7)
        problems.append(f"--timing_spread scales the world's speech-timing spreads, in [0, 3]; got {cfg.timing_spread}")
    if cfg.scene not in SCENES:
        problems.append(f"--scene must be one of {', '.join(SCENES)}, got {cfg.scene!r}")
    if cfg.tokenizer not in VOCABS:
        problems.append(f"--tokenizer must be one of {', '.join(VOCABS)}, got {cfg.tokenizer!r}")
    return problems

# ------------------------------------------------------------------------------------------------
# Identities: a continuous space of faces and voices
# ------------------------------------------------------------------------------------------------
HAIR_STYLES = ["short", "long", "tall"]
FACE_SHAPES = ["round", "square", "long"]
COLOUR_NAMES = {  # the palette: every hair, shirt and room colour is one of these, so every colour word is true
    "red": (0.85, 0.15, 0.15), "orange": (0.95, 0.55, 0.1), "yellow": (0.95, 0.9, 0.2),
    "green": (0.2, 0.7, 0.25), "teal": (0.1, 0.65, 0.65), "blue": (0.15, 0.3, 0.9),
    "purple": (0.55, 0.2, 0.75), "pink": (0.95, 0.5, 0.7), "brown": (0.45, 0.28, 0.12),
    "black": (0.08, 0.08, 0.08), "grey": (0.55, 0.55, 0.55), "white": (0.92, 0.92, 0.92),
}
# Each drawn colour is its palette entry plus a jitter of at most JITTER per channel: colours still vary from
# person to person, and the nearest palette entry is always the drawn one (the closest two entries, orange
# and yellow, are 0.36 apart; a jitter moves a colour at most 0.05 * sqrt(3) = 0.09). An earlier world drew any hue
# and named it by its nearest entry, which called a lime shirt "grey" and a purple room "grey" (issue 24).
JITTER = 0.05
ROOM_GREY, ROOM_MIX = np.array([0.62, 0.62, 0.62]), 0.45  # rooms: a palette colour 45% of the way to grey (muted)
ROOM_COLOURS = [n for n in COLOUR_NAMES if n not in ("black", "white")]  # a black room would hide black hair
SKIN_LIGHT, SKIN_DARK = np.array([0.98, 0.83, 0.7]), np.array([0.42, 0.26, 0.16])



def model_fit_problems(mcfg, wcfg: WorldConfig, config: str, codec=None) -> list[str]:
    """What a model needs of the toy world it trains on: RGB pixels and mels as its channels (or, with the
    toy's latent codec `codec` (codec.CodecConfig), the codec's latent channels), and sizes its patches tile
    exactly (a video token is patch_t x patch_h x patch_w pixels or latents, an audio token audio_patch mel
    frames or latents; each video frame spans a whole number of mel frames, for lip sync)."""
    problems = []
    pt = ph = pa = 1  # pixels (or mel frames) per model input position: 1, or the codec's patch
    if codec is not None:
        pt, ph, _ = codec.video_patch
        pa = codec.audio_patch
        for name, want in (("video_channels", codec.video_channels), ("audio_channels", codec.audio_channels)):
            if getattr(mcfg, name) != want:
                problems.append(f"--{name} {getattr(mcfg, name)} must equal the codec's latent channels ({want})")
    elif mcfg.video_channels != 3:
        return [f"--config {config} models {mcfg.video_channels}-channel video latents: train it on latent shards "
                "(--data 'shards/*.pt', see shards.py) or on the toy world through its codec (--config mini), not "
                "on the toy world's RGB pixels"]
    elif mcfg.audio_channels != wcfg.n_mels:
        problems.append(f"--audio_channels {mcfg.audio_channels} must equal --n_mels {wcfg.n_mels} (the toy's audio is its mel)")
    vocab = len(VOCABS.get(wcfg.tokenizer, ()))
    if mcfg.text_layers > 0 and mcfg.text_vocab < vocab:
        problems.append(f"--text_vocab {mcfg.text_vocab} is smaller than --tokenizer {wcfg.tokenizer}'s {vocab} tokens")
    if not wcfg.anchors and (mcfg.ocf or mcfg.mtp_ca):  # both read the caption's <subk> / <S> spans
        problems.append("--anchors false needs --ocf false --mtp_ca false: OCF and MTP-CA place the prompt by its "
                        "<subk> anchors (DreamID-Omni's ablation row runs without them)")
    for name in ("image_size", "ref_image_size"):
        if getattr(wcfg, name) % (ph * mcfg.patch_h) or getattr(wcfg, name) % (ph * mcfg.patch_w):
            problems.append(f"--{name} {getattr(wcfg, name)} must be a multiple of --patch_h and --patch_w "
                            f"({mcfg.patch_h}, {mcfg.patch_w})" + (f" times the codec's {ph}" if ph > 1 else ""))
    if abs(wcfg.clip_seconds * wcfg.fps - wcfg.frames) > 1e-6 or wcfg.sample_rate % (wcfg.fps * wcfg.hop):
        problems.append(f"--clip_seconds x --fps must be whole frames, and --sample_rate a multiple of --fps x --hop "
                        f"(whole mel frames per video frame); got {wcfg.clip_seconds} s, {wcfg.fps} fps, "
                        f"{wcfg.sample_rate} Hz, hop {wcfg.hop}")
    elif wcfg.frames % (pt * mcfg.patch_t):
        problems.append(f"the clip's {wcfg.frames} frames (--clip_seconds x --fps) must be a multiple of --patch_t "
                        f"{mcfg.patch_t}" + (f" times the codec's {pt}" if pt > 1 else ""))
    for what, n in (("clip", wcfg.mel_frames), ("reference voice", wcfg.ref_mel_frames)):
        if n % (pa * mcfg.audio_patch):
            problems.append(f"the {what}'s {n} mel frames must be a multiple of --audio_patch {mcfg.audio_patch}"
                            + (f" times the codec's {pa}" if pa > 1 else ""))
    if wcfg.ref_audio_seconds > wcfg.clip_seconds:  # a reference voice is cut from another utterance of a clip's length
        problems.append(f"--ref_audio_seconds {wcfg.ref_audio_seconds} must be at most --clip_seconds {wcfg.clip_seconds}")
    return problems

HAIR_COLOURS = [n for n in COLOUR_NAMES if n != "white"]  # white hair on light skin would not read as hair
SHIRT_COLOURS = [n for n in COLOUR_NAMES if n not in ("black", "brown")]  # a shirt reads against dark hair


def palette_colour(rng: np.random.Generator, name: str, toward=None, mix: float = 0.0) -> np.ndarray:
    """Palette entry `name` (optionally mixed toward `toward`), jittered by at most JITTER per channel."""
    base = np.asarray(COLOUR_NAMES[name])
    if toward is not None:
        base = (1 - mix) * base + mix * toward
    return np.clip(base + rng.uniform(-JITTER, JITTER, 3), 0, 1).astype(np.float32)


def colour_name(rgb) -> str:
    names = list(COLOUR_NAMES)
    table = np.array([COLOUR_NAMES[n] for n in names])  # (12, 3): nearest named colour in RGB
    return names[int(np.argmin(((table - np.asarray(rgb)) ** 2).sum(1)))]


@dataclass
class Identity:
    skin: np.ndarray            # RGB in [0, 1]
    hair: np.ndarray
    shirt: np.ndarray
    hair_style: int             # index into HAIR_STYLES
    face_shape: int             # index into FACE_SHAPES
    glasses: bool
    pitch_hz: float             # mean f0
    tract_scale: float          # >1 = longer vocal tract = lower formants
    tilt_db: float              # spectral tilt per octave (brightness); -3 bright, -10 soft
    prosody: float              # depth of the slow pitch wobble

    @staticmethod
    def sample(rng: np.random.Generator) -> "Identity":
        return Identity(
            skin=(SKIN_LIGHT + rng.random() * (SKIN_DARK - SKIN_LIGHT)).astype(np.float32),
            hair=palette_colour(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]),
            shirt=palette_colour(rng, SHIRT_COLOURS[rng.integers(len(SHIRT_COLOURS))]),
            hair_style=int(rng.integers(len(HAIR_STYLES))),
            face_shape=int(rng.integers(len(FACE_SHAPES))),
            glasses=bool(rng.random() < 0.35),
            pitch_hz=float(np.exp(rng.uniform(np.log(90), np.log(260)))),
            tract_scale=float(rng.uniform(0.82, 1.2)),
            tilt_db=float(rng.uniform(-10.0, -3.0)),
            prosody=float(rng.uniform(0.02, 0.08)),
        )

    def describe(self) -> str:
        """Looks and voice in caption words (the descriptor of Omni-Customizer Eq. 2)."""
        skin = "light" if np.mean(self.skin) > 0.72 else ("tan" if np.mean(self.skin) > 0.5 else "dark")
        pitch = "low" if self.pitch_hz < 140 else ("mid" if self.pitch_hz < 190 else "high")
        tone = "bright" if self.tilt_db > -6.5 else "soft"
        looks = (f"{colour_name(self.hair)} {HAIR_STYLES[self.hair_style]} hair, "
                 f"{colour_name(self.shirt)} shirt, {skin} skin, {FACE_SHAPES[self.face_shape]} face")
        return looks + (", glasses" if self.glasses else "") + f", {pitch} {tone} voice"

    def traits(self) -> np.ndarray:
        """The identity as numbers (what the benchmark compares): colours, discrete traits, voice."""
        return np.concatenate([self.skin, self.hair, self.shirt,
                               [self.hair_style, self.face_shape, float(self.glasses),
                                np.log(self.pitch_hz), self.tract_scale, self.tilt_db]]).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Pictures: rooms and cartoon people
# ------------------------------------------------------------------------------------------------
TEXTURES = ["stripes", "bars", "checks", "dots"]


def render_room(size: int, room: dict, x0: int = 0) -> np.ndarray:
    """(size, size, 3) background: a colour with a faint periodic texture; x0 = where the camera looks."""
    y, x = np.mgrid[:size, :size]
    x = x + x0
    p = room["period"]  # texture period in pixels (2-4): fine enough to read as texture, not as objects
    pattern = {"stripes": (y // p) % 2, "bars": (x // p) % 2, "checks": ((x // p) + (y // p)) % 2,
               "dots": ((x % p == 0) & (y % p == 0))}[room["texture"]]
    return (room["colour"][None, None] * (1 - 0.18 * pattern[..., None])).astype(np.float32)


def render_person(ident: Identity, radius: float, head_shift: float = 0.0, gaze: float = 0.0):
    """A person sprite: (rgba (h, w, 4), mouth geometry). Head of `radius` px; shoulders below.

    `head_shift` (px) turns the head relative to the body and `gaze` moves the eyes: the toy's pose.
    The mouth is drawn per frame by `draw_mouth`, so the sprite is rendered once per clip.
    """
    r = radius
    sx, sy = {0: (1.0, 1.0), 1: (1.0, 1.0), 2: (0.8, 1.2)}[ident.face_shape]
    a, b = r * sx, r * sy                                   # head half-width / half-height
    h, w = int(math.ceil(b * 2 + 0.9 * r + 2.2 * r)), int(math.ceil(2.9 * r))
    cy, cx = b + 0.9 * r, w / 2 - 0.5 + head_shift          # head centre (room for tall hair above)
    y, x = np.mgrid[:h, :w].astype(np.float32)
    dy, dx = (y - cy) / b, (x - cx) / a
    power = 4 if ident.face_shape == 1 else 2               # square faces are superellipses
    head = (np.abs(dx) ** power + np.abs(dy) ** power) <= 1
    rgba = np.zeros((h, w, 4), np.float32)

    def paint(mask, colour):
        rgba[mask, :3] = colour
        rgba[mask, 3] = 1

    shoulders = (y >= cy + b * 0.85) & (np.abs(x - w / 2 + 0.5) <= 1.35 * r)
    paint(shoulders, ident.shirt)
    paint(head, ident.skin)
    hair = head & (dy < -0.35)
    if ident.hair_style == 1:   # long: falls past the ears
        hair |= (np.abs(dx) <= 1.3) & (np.abs(dx) >= 0.75) & (dy < 0.7) & (dy > -1.0)
    if ident.hair_style == 2:   # tall: a block above the head
        hair |= (np.abs(dx) <= 0.7) & (dy < -0.5) & (dy > -1.75)
    paint(hair, ident.hair)
    eye_y, eye_dx = int(round(cy - 0.1 * b)), 0.42 * a
    if ident.glasses:
        band = (np.abs(y - eye_y) < 0.6) & (np.abs(x - cx) <= 0.85 * a)
        paint(band, np.array([0.1, 0.1, 0.15]))
    for side in (-1, 1):
        ex = int(round(cx + side * eye_dx + gaze))
        paint((y == eye_y) & (x == ex), np.array([0.75, 0.85, 0.95]) if ident.glasses else np.zeros(3) + 0.05)
    mouth = dict(y=int(round(cy + 0.5 * b)), x0=int(round(cx - 0.4 * a)),
                 x1=max(int(round(cx + 0.4 * a)), int(round(cx - 0.4 * a)) + 1), max_h=max(1.0, 0.4 * b))
    return rgba, mouth


def draw_mouth(rgba: np.ndarray, mouth: dict, opening: float, skin) -> np.ndarray:
    """Copy of the sprite with the mouth drawn `opening` (0 = shut line, 1 = wide open)."""
    out = rgba.copy()
    y, x0, x1 = mouth["y"], mouth["x0"], mouth["x1"]
    out[y, x0:x1, :3] = np.asarray(skin) * 0.55               # the lips' line: a shut mouth
    height = opening * mouth["max_h"]
    for row in range(int(math.ceil(height))):                 # open rows, the last one partly
        alpha = min(1.0, height - row)
        yy = min(y + row, out.shape[0] - 1)
        out[yy, x0:x1, :3] = (1 - alpha) * out[yy, x0:x1, :3] + alpha * np.array([0.35, 0.03, 0.06])
    return out


def paste(canvas: np.ndarray, rgba: np.ndarray, top: int, left: int):
    """Alpha-paste a sprite at (top, left), clipped; returns the visible box (x0, y0, x1, y1)."""
    H, W = canvas.shape[:2]
    h, w = rgba.shape[:2]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, H), min(left + w, W)
    if y0 >= y1 or x0 >= x1:
        return (0, 0, 0, 0)
    sprite = rgba[y0 - top: y1 - top, x0 - left: x1 - left]
    alpha = sprite[..., 3:]
    canvas[y0:y1, x0:x1] = (1 - alpha) * canvas[y0:y1, x0:x1] + alpha * sprite[..., :3]
    return (x0, y0, x1, y1)


def render_portrait(ident: Identity, cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """A cross-pair reference: the identity re-rendered in a new pose, scale, place, mouth, backdrop."""
    size = cfg.ref_image_size
    room = sample_room(rng)  # a new backdrop: nothing of the clip's room leaks into the reference
    canvas = render_room(size, room)
    radius = rng.uniform(0.26, 0.36) * size
    rgba, mouth = render_person(ident, radius, head_shift=rng.uniform(-1, 1), gaze=rng.choice([-1, 0, 1]))
    rgba = draw_mouth(rgba, mouth, rng.uniform(0, 0.8), ident.skin)
    head_y = int(round(radius * (1.35 if ident.face_shape == 2 else 1.2) + 0.9 * radius))
    top = int(round(size * 0.45 - head_y + rng.uniform(-1.5, 1.5)))
    left = int(round(size / 2 - rgba.shape[1] / 2 + rng.uniform(-2, 2)))
    paste(canvas, rgba, top, left)
    return canvas


def crop_portrait(frame: np.ndarray, head_xy, radius: float, out_size: int) -> np.ndarray:
    """An in-pair reference: a head-and-shoulders square crop of a clip frame, resized."""
    side = 3.2 * radius
    x0, y0 = head_xy[0] - side / 2, head_xy[1] - side * 0.45
    pad = int(side) + 2  # edge-pad so a subject near the border still gets a full crop
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    ys = np.clip((y0 + pad + (np.arange(out_size) + 0.5) * side / out_size).astype(int), 0, padded.shape[0] - 1)
    xs = np.clip((x0 + pad + (np.arange(out_size) + 0.5) * side / out_size).astype(int), 0, padded.shape[1] - 1)
    return padded[ys][:, xs]


def room_colour_name(rgb) -> str:
    """The palette name of a room colour: its nearest muted palette entry."""
    table = np.array([(1 - ROOM_MIX) * np.asarray(COLOUR_NAMES[n]) + ROOM_MIX * ROOM_GREY for n in ROOM_COLOURS])
    return ROOM_COLOURS[int(np.argmin(((table - np.asarray(rgb)) ** 2).sum(1)))]


def sample_room(rng: np.random.Generator) -> dict:
    name = ROOM_COLOURS[rng.integers(len(ROOM_COLOURS))]
    return dict(colour=palette_colour(rng, name, ROOM_GREY, ROOM_MIX),
                texture=TEXTURES[rng.integers(len(TEXTURES))], period=int(rng.integers(2, 5)),
                cutoff_hz=float(rng.uniform(300, 3000)), level=float(rng.uniform(0.002, 0.006)),
                hum_hz=float(rng.uniform(60, 220)), hum_level=float(rng.uniform(0.002, 0.006)))


# ------------------------------------------------------------------------------------------------
# Captions: the world describes its clips in the structured form (caption.py holds the grammar)
# ------------------------------------------------------------------------------------------------


def nickname(ident: Identity) -> str:
    """A pronounceable name of language A for a subject, a pure function of its identity (the clip's own
    random stream is not touched, so a case keeps its people, lines and pictures with or without it)."""
    rng = np.random.default_rng(zlib.crc32(ident.traits().tobytes()))
    return speech.make_words(rng, "A", 0.5)


def layout_radius(n_on_screen: int, size: int) -> float:
    """A head's radius in pixels when n people share the frame side by side (one: a fifth of the frame)."""
    return size * {1: 0.2, 2: 0.15, 3: 0.12}[max(1, min(3, n_on_screen))]


def make_caption(idents, roles, lines, room, anchors: bool = True, nicknames: bool = False) -> str:
    """The structured caption (Omni-Customizer Eq. 2): descriptors, scene + actions, then the lines.
    anchors=False (the DreamID-Omni ablation): the same sentences with every `<subk>` replaced by subject k's
    label, so text alone says who is who and who says what, but nothing ties a person to reference k.
    nicknames=True: each descriptor ends ", called <name>", words a model that speaks its caption would say."""
    shirt_names = [colour_name(p.shirt) for p in idents]
    labels = []
    for k, ident in enumerate(idents):
        label = f"the one in {shirt_names[k]}"
        if shirt_names.count(shirt_names[k]) > 1:  # keep labels distinct: add the hair
            label += f" with {colour_name(ident.hair)} hair"
        labels.append(label)
    name = [f"<sub{k + 1}>" if anchors else labels[k] for k in range(len(idents))]
    looks = [ident.describe() + (f", called {nickname(ident)}" if nicknames else "") for ident in idents]
    parts = [f"{labels[k]} <sub{k + 1}>: {looks[k]}." if anchors else f"{labels[k]}: {looks[k]}."
             for k in range(len(idents))]
    parts.append(f"a {room_colour_name(room['colour'])} room with {room['texture']}.")
    for k, role in enumerate(roles):
        parts.append({"speaker": f"{name[k]} talks.", "silent": f"{name[k]} listens quietly.",
                      "offscreen": f"{name[k]} speaks off screen."}[role])
    parts += [f"{name[who]} says <S> {text} <E>" for who, text, _, _ in lines]
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------
# Scenes: one sample of the world
# ------------------------------------------------------------------------------------------------


def sample_roles(rng, cfg: WorldConfig) -> list[str]:
    """Who is in the scene and what they do: speaker / silent / offscreen per subject."""
    if cfg.scene == "single":
        return ["speaker"]
    if cfg.scene == "dialogue":
        return ["speaker", "speaker"]
    if cfg.scene == "complex":  # OC-Bench subset 3: a silent identity or an off-screen speaker
        n = int(rng.integers(2, min(3, cfg.max_subjects) + 1))
        roles = ["speaker"] * n
        roles[int(rng.integers(1, n))] = "silent" if rng.random() < 0.5 else "offscreen"
        return list(rng.permutation(roles))  # the silent / off-screen one may be any <subk>
    n = int(rng.integers(cfg.min_subjects, cfg.max_subjects + 1))
    roles = []
    for _ in range(n):
        r = rng.random()
        roles.append("silent" if n > 1 and r < cfg.silent_prob
                     else "offscreen" if n > 1 and r < cfg.silent_prob + cfg.offscreen_prob else "speaker")
    if "speaker" not in roles and "offscreen" not in roles:
        roles[0] = "speaker"
    return roles


def make_clip(rng: np.random.Generator, cfg: WorldConfig) -> dict:
    """One paired audio-video sample with captions, references, task inputs and ground truth."""
    roles = sample_roles(rng, cfg)
    idents = [Identity.sample(rng) for _ in roles]
    room = sample_room(rng)
    # language B: cfg.lang_b of ordinary clips, half of the complex ones (OC-Bench subset 3 is multilingual)
    language = "B" if (cfg.scene == "complex" and rng.random() < 0.5) or rng.random() < cfg.lang_b else "A"
    wav, mouth_energy, lines, rates = speak_script(rng, cfg, roles, idents, room, language)
    mouth_open, activity = lip_sync(mouth_energy, cfg)
    frames, boxes, heads, radius, motion = render_scene(rng, cfg, roles, idents, room, mouth_open)
    cross = rng.random() < cfg.cross_pair
    refs = make_references(rng, cfg, roles, idents, language, rates, lines, wav, frames, heads, radius, cross)
    caption = make_caption(idents, roles, lines, room, nicknames=cfg.nicknames)
    sample = dict(
        video=torch.from_numpy(frames).permute(0, 3, 1, 2).float() * 2 - 1,           # (T, 3, H, W) in [-1, 1]
        audio=speech.wav_to_mel(wav, cfg), wav=wav,                                   # (T_mel, n_mels)
        source_mask=rv2av_mask(boxes, roles, cfg),    # RA2V's driving audio is `audio` itself
        mouth_open=torch.from_numpy(mouth_open), speech_activity=torch.from_numpy(activity).float(),
        boxes=torch.from_numpy(boxes), on_screen=torch.tensor([r != "offscreen" for r in roles]),
        trajectories=torch.from_numpy(motion["trajectories"]), camera=torch.from_numpy(motion["camera"]),
        caption=caption, roles=roles, language=language, cross_pair=bool(cross), room=room,
        line_times=[(who, start, end) for who, _, start, end in lines], identities=idents, **refs,
    )
    sample.update(caption_fields(caption, cfg.tokenizer))
    if not cfg.anchors:  # the prompt the model reads; spans stay the anchored caption's (OCF/MTP-CA need anchors)
        sample["text_ids"] = torch.tensor(tokenize(make_caption(idents, roles, lines, room, anchors=False,
                                                                nicknames=cfg.nicknames), cfg.tokenizer))
    return sample


def speaking_rate(rng, cfg: WorldConfig) -> float:
    """A speaker's rate, 1 +- 0.15 x --timing_spread (0: always 1; the draw is made either way, so the stream of
    every later draw is the same in both worlds)."""
    return rng.uniform(1 - 0.15 * cfg.timing_spread, 1 + 0.15 * cfg.timing_spread)


def speak_script(rng, cfg: WorldConfig, roles, idents, room, language):
    """The script and its sound: dialogue turns among the voiced subjects, in time order, no overlap.
    Returns (wav, per-subject mouth energy, lines [(who, text, start, end)], speaking rates)."""
    voiced = [k for k, r in enumerate(roles) if r != "silent"]
    n_lines = len(voiced) if len(voiced) > 1 else int(rng.integers(1, 3))  # one turn each, or 1-2 lines alone
    order = [voiced[i % len(voiced)] for i in range(n_lines)]                # speakers take turns
    spread = cfg.timing_spread  # 1: the world's timing; 0: fixed (the same draws, so the stream stays aligned)
    rates = [speaking_rate(rng, cfg) for _ in roles]     # each subject's
    budget = (cfg.clip_seconds - 0.25) / n_lines - 0.12  # seconds of speech per line, leaving pauses
    segments, lines, t = [], [], rng.uniform(0.05, 0.05 + 0.15 * spread)
    for who in order:
        text = speech.make_words(rng, language, budget / rates[who])
        seg, end = speech.schedule_line(text, who, t, rates[who])
        if end > cfg.clip_seconds - 0.05:
            break
        segments += seg
        lines.append((who, text, t, end))
        t = end + rng.uniform(0.08, 0.08 + 0.12 * spread)
    wav, mouth_energy = speech.synthesize(segments, idents, cfg.samples, cfg, rng, ambient=room)
    return wav, mouth_energy, lines, rates


def lip_sync(mouth_energy: np.ndarray, cfg: WorldConfig):
    """Lip-sync ground truth: mouth opening per video frame (K, T) from each subject's own speech energy,
    and speech activity per mel frame (K, T_mel)."""
    n = mouth_energy.shape[0]
    per_frame = cfg.sample_rate // (cfg.fps * speech.SYNTH_HOP)       # control frames per video frame (16)
    energy = mouth_energy[:, : cfg.frames * per_frame].reshape(n, cfg.frames, per_frame)
    mouth_open = np.clip(energy.mean(-1) / 0.45, 0, 1).astype(np.float32)           # (K, T)
    activity = mouth_energy[:, : cfg.mel_frames * 2].reshape(n, cfg.mel_frames, 2).mean(-1)  # (K, T_mel)
    return mouth_open, activity


POINTS = ("head", "mouth", "shirt")  # the tracked points of each subject (DreamVideo-Omni's trajectories)


def camera_path(rng, cfg: WorldConfig) -> np.ndarray:
    """(T,) the camera's x offset per frame in pixels: 0, or a steady pan of 0.5-1 px a frame either way.
    Draws from rng only when panning is on, so clips of worlds without it are unchanged."""
    if cfg.camera_pan > 0 and rng.random() < cfg.camera_pan:
        speed = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0)
        return np.round(speed * np.arange(cfg.frames)).astype(np.float32)
    return np.zeros(cfg.frames, np.float32)


def render_scene(rng, cfg: WorldConfig, roles, idents, room, mouth_open):
    """The frames: on-screen subjects side by side at the bottom edge, maybe drifting, mouths per frame,
    seen by a camera that may pan. Returns (frames (T, H, W, 3), boxes (K, T, 4), head centres (K, T, 2),
    head radius, motion): motion holds each subject's POINTS per frame, trajectories (K, T, 3, 2) as (x, y)
    pixels (zero off screen), and the camera's x offset per frame, camera (T,)."""
    camera = camera_path(rng, cfg)
    n, size = len(roles), cfg.image_size
    on_screen = [k for k, r in enumerate(roles) if r != "offscreen"]
    radius = layout_radius(len(on_screen), size) * rng.uniform(0.9, 1.1)
    frames = np.stack([render_room(size, room, int(c)) for c in camera])           # (T, H, W, 3)
    boxes = np.zeros((n, cfg.frames, 4), np.float32)
    heads = np.zeros((n, cfg.frames, 2), np.float32)
    points = np.zeros((n, cfg.frames, len(POINTS), 2), np.float32)
    sprites = {k: render_person(idents[k], radius, gaze=rng.choice([-1, 0, 1]) * 0.5) for k in on_screen}
    for slot, k in enumerate(on_screen):
        rgba, mouth = sprites[k]
        cx = size * (slot + 0.5) / len(on_screen) + rng.uniform(-1.5, 1.5)
        top = size - rgba.shape[0] + rng.uniform(1, 4)          # standing at the bottom edge (feet out of frame)
        vx, vy = (rng.uniform(-0.3, 0.3), rng.uniform(-0.1, 0.1)) if rng.random() < cfg.move_prob else (0, 0)
        head_dy = mouth["y"] - 0.5 * radius * (1.2 if idents[k].face_shape == 2 else 1.0)
        for f in range(cfg.frames):  # the camera moving right moves everyone left in the frame
            left, y = int(round(cx + vx * f - rgba.shape[1] / 2 - camera[f])), int(round(top + vy * f))
            boxes[k, f] = paste(frames[f], draw_mouth(rgba, mouth, mouth_open[k, f], idents[k].skin), y, left)
            heads[k, f] = (left + rgba.shape[1] / 2, y + head_dy)
            points[k, f] = [heads[k, f], mouth_point(left, y, mouth), (left + rgba.shape[1] / 2, y + 0.85 * rgba.shape[0])]
    return frames, boxes, heads, radius, dict(trajectories=points, camera=camera)


def mouth_point(left: float, top: float, mouth: dict) -> tuple[float, float]:
    """The centre of a sprite's mouth line, placed at (top, left): a point the benchmark can track."""
    return left + (mouth["x0"] + mouth["x1"]) / 2, top + mouth["y"]


def make_references(rng, cfg: WorldConfig, roles, idents, language, rates, lines, wav, frames, heads, radius,
                    cross: bool) -> dict:
    """References in <sub1>, <sub2>... order: in-pair (a crop of a frame, a stretch of the clip's audio)
    or cross-pair (re-rendered portrait, the same voice saying other words), and where in-pair ones came from."""
    n = len(roles)
    ref_images, ref_audio_wavs = [], []
    ref_frame = torch.full((n,), -1, dtype=torch.long)        # in-pair: the frame a reference was cropped from
    ref_audio_start = torch.full((n,), -1, dtype=torch.long)  # in-pair: first mel frame of the voice stretch
    ref_len = round(cfg.ref_audio_seconds * cfg.sample_rate)
    for k in range(n):
        if cross or roles[k] == "offscreen":   # no frame shows this subject, or cross-pair
            ref_images.append(render_portrait(idents[k], cfg, rng))
        else:
            f = int(rng.integers(cfg.frames))
            ref_images.append(crop_portrait(frames[f], heads[k, f], radius, cfg.ref_image_size))
            ref_frame[k] = f
        own = [ln for ln in lines if ln[0] == k]
        if cross or not own:                   # the same voice saying other words
            text = speech.make_words(rng, language, cfg.ref_audio_seconds - 0.3)
            seg, _ = speech.schedule_line(text, 0, 0.1, rates[k])
            ref_wav, _ = speech.synthesize(seg, [idents[k]], ref_len, cfg, rng)
        else:                                  # a stretch of this clip around the subject's line
            mid = (own[0][2] + own[0][3]) / 2
            start = int(np.clip(mid * cfg.sample_rate - ref_len / 2, 0, cfg.samples - ref_len)) // cfg.hop * cfg.hop
            ref_wav = wav[start: start + ref_len]
            ref_audio_start[k] = start // cfg.hop
        ref_audio_wavs.append(ref_wav)
    return dict(ref_images=torch.from_numpy(np.stack(ref_images)).permute(0, 3, 1, 2) * 2 - 1,  # (K, 3, r, r)
                ref_audio=speech.wav_to_mel(torch.stack(ref_audio_wavs), cfg),                 # (K, T_ref, n_mels)
                ref_frame=ref_frame, ref_audio_start=ref_audio_start)


def rv2av_mask(boxes: np.ndarray, roles, cfg: WorldConfig) -> torch.Tensor:
    """DreamID-Omni's RV2AV source mask (T, 1, H, W): 1 = every on-screen subject's box, the region to regenerate."""
    seen = [k for k, role in enumerate(roles) if role != "offscreen"]
    size = cfg.image_size
    inside = box_masks(torch.from_numpy(boxes[seen]).float() / size, size, size)    # (K_seen, T, H, W)
    return inside.any(dim=0).float()[:, None]                                       # (T, 1, H, W)


def make_audio_only(rng: np.random.Generator, cfg: WorldConfig) -> dict:
    """One sample of the audio-only corpus (speaker + utterance, no video; Omni-Customizer 4.3)."""
    ident = Identity.sample(rng)
    language = "B" if rng.random() < cfg.lang_b_audio_only else "A"
    rate = speaking_rate(rng, cfg)
    start = rng.uniform(0.05, 0.05 + 0.2 * cfg.timing_spread)  # alone, a line may start a little later
    text = speech.make_words(rng, language, (cfg.clip_seconds - start - 0.2) / rate)
    seg, _ = speech.schedule_line(text, 0, start, rate)
    wav, energy = speech.synthesize(seg, [ident], cfg.samples, cfg, rng)
    ref_text = speech.make_words(rng, language, cfg.ref_audio_seconds - 0.3)
    ref_seg, _ = speech.schedule_line(ref_text, 0, 0.1, rate)
    ref_wav, _ = speech.synthesize(ref_seg, [ident], round(cfg.ref_audio_seconds * cfg.sample_rate), cfg, rng)
    pitch = "low" if ident.pitch_hz < 140 else ("mid" if ident.pitch_hz < 190 else "high")
    voice = f"{pitch} {'bright' if ident.tilt_db > -6.5 else 'soft'} voice"
    caption = f"a voice <sub1>: {voice}. <sub1> says <S> {text} <E>"
    sample = dict(audio=speech.wav_to_mel(wav[None], cfg)[0], wav=wav, ref_audio=speech.wav_to_mel(ref_wav[None], cfg),
                  ref_images=torch.zeros(1, 3, cfg.ref_image_size, cfg.ref_image_size),  # no face: masked out
                  ref_image_mask=torch.zeros(1, dtype=torch.bool),
                  caption=caption, language=language, identities=[ident], roles=["offscreen"],
                  speech_activity=torch.from_numpy(energy[:, : cfg.mel_frames * 2].reshape(1, -1, 2).mean(-1)).float())
    sample.update(caption_fields(caption, cfg.tokenizer))
    if not cfg.anchors:  # as make_clip: the same sentences, the voice named by what it is instead of <sub1>
        sample["text_ids"] = torch.tensor(tokenize(f"a voice: {voice}. the voice says <S> {text} <E>", cfg.tokenizer))
    return sample


# ------------------------------------------------------------------------------------------------
# Batching and the infinite, seeded stream
# ------------------------------------------------------------------------------------------------
# name -> (padding value, which leading dims vary between samples: 1 = first, 2 = first two)
_PADDED = {"text_ids": (PAD_ID, 1), "subject_spans": (0, 1), "ref_images": (0.0, 1), "ref_audio": (0.0, 1),
           "speech_spans": (0, 1), "line_speaker": (0, 1), "line_phonemes": (speech.PAD_PHONEME, 2),
           "mouth_open": (0.0, 1), "speech_activity": (0.0, 1), "boxes": (0.0, 1), "on_screen": (False, 1),
           "trajectories": (0.0, 1),
           "ref_frame": (-1, 1), "ref_audio_start": (-1, 1), "ref_image_mask": (False, 1)}


def pad_stack(tensors: list[torch.Tensor], value, dims: int = 1) -> torch.Tensor:
    """Stack tensors whose first `dims` dims differ, padding each up to the longest with `value`."""
    shape = [max(t.shape[d] for t in tensors) for d in range(dims)] + list(tensors[0].shape[dims:])
    out = torch.full([len(tensors)] + shape, value, dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[(i,) + tuple(slice(0, s) for s in t.shape[:dims])] = t
    return out


def collate(samples: list[dict]) -> dict:
    """List of samples -> batch dict. Padded fields come with masks (True = real):
    text_mask (B, L), subject_mask (B, K), line_mask (B, M), phoneme_mask (B, M, P)."""
    batch = {}
    for key, value in samples[0].items():
        values = [s[key] for s in samples]
        if key in _PADDED:
            batch[key] = pad_stack(values, *_PADDED[key])
        elif isinstance(value, torch.Tensor) and key != "wav":
            batch[key] = torch.stack(values)
        else:
            batch[key] = values  # strings, identities, waveforms: kept as lists
    batch["text_mask"] = batch["text_ids"] != PAD_ID
    batch["subject_mask"] = pad_stack([torch.ones(len(s["subject_spans"]), dtype=torch.bool) for s in samples], False)
    batch["line_mask"] = pad_stack([torch.ones(len(s["speech_spans"]), dtype=torch.bool) for s in samples], False)
    batch["phoneme_mask"] = batch["line_phonemes"] != speech.PAD_PHONEME
    if "ref_image_mask" not in batch:  # paired clips: every real subject has a reference image
        batch["ref_image_mask"] = batch["subject_mask"]
    return batch


def sample_rng(seed: int, stream: int, rank: int, index: int) -> np.random.Generator:
    """The generator of one sample: a pure function of its coordinates (no hidden state)."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, rank, index]))


HELD_OUT_SEED, HELD_OUT_STREAM = 2024, 3  # the benchmark's stream: no training stream (0 paired, 1 audio-only) meets it


def held_out_case(world: WorldConfig, subset: str, i: int) -> dict:
    """Case i of a benchmark subset (single | dialogue | complex | motion): held-out identities and cross-pair
    references, so copying a reference cannot score. bench.py scores these; train.py's progress strip shows
    single case 0. motion (DreamVideo-Omni): 1-3 people who all move, and the camera pans in half the clips."""
    if subset == "motion":
        world = dataclasses.replace(world, scene="mixed", move_prob=1.0, camera_pan=0.5)
    else:
        world = dataclasses.replace(world, scene=subset)
    return make_clip(sample_rng(HELD_OUT_SEED, HELD_OUT_STREAM, 0, i), dataclasses.replace(world, cross_pair=1.0))


class ToyBatches(torch.utils.data.IterableDataset):
    """Infinite stream of collated toy batches (use DataLoader(batch_size=None)).

    Batch b of rank r holds samples b*B ... b*B+B-1, each made by `sample_rng(seed, stream, r, i)`.
    DataLoader worker w of W makes batches b = w, w+W, ... and the loader's round-robin returns them
    in order, so the stream is the same for any number of workers; `start_batch` resumes it.
    stream 0 = paired clips, 1 = the audio-only corpus.
    """

    def __init__(self, cfg: WorldConfig, batch_size: int, seed: int = 0, rank: int = 0,
                 start_batch: int = 0, audio_only: bool = False):
        super().__init__()
        self.cfg, self.batch_size, self.seed, self.rank = cfg, batch_size, seed, rank
        self.start_batch, self.audio_only = start_batch, audio_only

    def make_batch(self, b: int) -> dict:
        make = make_audio_only if self.audio_only else make_clip
        stream = 1 if self.audio_only else 0
        return collate([make(sample_rng(self.seed, stream, self.rank, b * self.batch_size + i), self.cfg)
                        for i in range(self.batch_size)])

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        b = self.start_batch + worker
        while True:
            yield self.make_batch(b)
            b += workers


# ------------------------------------------------------------------------------------------------
# Preview: look at and listen to the world
# ------------------------------------------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).numpy()


def contact_sheet(frames: np.ndarray, scale: int = 4, columns: int = 8):
    """(T, H, W, 3) uint8 -> a PIL image of the frames in a grid, enlarged for eyes."""
    from PIL import Image
    t, h, w, _ = frames.shape
    rows = math.ceil(t / columns)
    sheet = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, 3), 255, np.uint8)
    for i, fr in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = fr
    return Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST)


def save_gif(path: str, frames: np.ndarray, fps: int, scale: int = 6):
    from PIL import Image
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def mel_image(mel: torch.Tensor, scale: int = 3):
    """(T_mel, n_mels) -> PIL image, low frequencies at the bottom."""
    from PIL import Image
    img = ((mel.T.flip(0) * speech.MEL_STD + speech.MEL_MEAN + 12) / 12).clamp(0, 1)
    arr = (img.numpy() * 255).astype(np.uint8)
    return Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)


def preview(out_dir: str, clips: int, seed: int, cfg: WorldConfig):
    from PIL import Image
    os.makedirs(out_dir, exist_ok=True)
    for i in range(clips):
        s = make_clip(sample_rng(seed, 0, 0, i), cfg)
        stem = os.path.join(out_dir, f"clip{i}")
        frames = to_uint8(s["video"])
        contact_sheet(frames).save(stem + "_frames.png")
        save_gif(stem + ".gif", frames, cfg.fps)
        speech.save_wav(stem + ".wav", s["wav"], cfg.sample_rate)
        mel_image(s["audio"]).save(stem + "_mel.png")
        contact_sheet(to_uint8(s["ref_images"]), scale=6).save(stem + "_refs.png")
        for k in range(len(s["ref_audio"])):  # each reference as its own files: sample.py --ref_image / --ref_audio
            Image.fromarray(to_uint8(s["ref_images"][k:k + 1])[0]).save(f"{stem}_ref{k + 1}.png")  # at its own size
            speech.save_wav(f"{stem}_ref{k + 1}.wav", speech.mel_to_wav(s["ref_audio"][k], cfg), cfg.sample_rate)
        with open(stem + "_caption.txt", "w") as f:
            f.write(s["caption"] + "\n")
        print(f"{stem}_*  (frames, gif, wav, mel, refs; ref1.png/.wav ... for sample.py): {s['caption']}")
    print(f"wrote {clips} clips to {out_dir}")


def main():
    from cli import OneLineParser, out_dir_problems  # the entry points' one-line flag errors
    parser = OneLineParser(description="Preview the toy world as files a person can open.")
    parser.add_argument("--out_dir", default="preview", help="where to write the files")
    parser.add_argument("--clips", type=int, default=4, help="how many clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scene", default="mixed", choices=SCENES)
    args = parser.parse_args()
    problems = out_dir_problems(args.out_dir) + [f"--{n} must be at least {low}, got {getattr(args, n)}"
                                                 for n, low in (("clips", 1), ("seed", 0)) if getattr(args, n) < low]
    if problems:
        parser.exit(2, "".join(f"error: {p}\n" for p in problems))
    preview(args.out_dir, args.clips, args.seed, WorldConfig(scene=args.scene))


if __name__ == "__main__":
    main()
