"""The user's files: reference images, voice and driving wavs, source animations.

Everything a person hands to `sample.py` passes through here, and every problem with it -- a missing
file, a folder where a file should be, a picture too large to decode safely, a wav in a format we do
not read, a sample rate no microphone records at, a sample that is NaN -- stops with one line naming
the file, the problem and what to do (InputError). Nothing here knows about the model.

Wav files are read by our own RIFF reader rather than the standard library's `wave` (integer PCM
only) or torchaudio's loader (which needs torchcodec in 2.11): most audio programs write IEEE-float
or WAVE_FORMAT_EXTENSIBLE files, and a few dozen lines read them all.
"""
from __future__ import annotations

import math
import os
import struct

import numpy as np
import torch


class InputError(ValueError):
    """Bad user input; the message is one line naming the problem and the fix."""


def existing_file(path: str, flag: str):
    """Stop unless `path` is a file (not missing, not a folder)."""
    if not os.path.exists(path):
        raise InputError(f"{flag} {path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{flag} {path}: is a folder; give a file")


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------

MAX_IMAGE_PIXELS = 8192 * 8192  # 8K square: far beyond any reference photo, small enough to decode (200 MB RGB)


def open_image(path: str, flag: str):
    """PIL image, opened lazily: the header is read and its size checked before any pixel is decoded,
    so a decompression bomb (a few KB that inflate to gigabytes) is refused, not allocated."""
    from PIL import Image, UnidentifiedImageError
    existing_file(path, flag)
    try:
        img = Image.open(path)
    except Image.DecompressionBombError:  # PIL's own guard (> 179M pixels) fires inside open()
        raise InputError(f"{flag} {path}: the image is too large to decode safely; resize it below 8192x8192") from None
    except (UnidentifiedImageError, OSError):
        raise InputError(f"{flag} {path}: not a readable image (use PNG, JPEG, GIF or WebP)") from None
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(f"{flag} {path}: the image is {w}x{h}; resize it below 8192x8192")
    return img


def load_image(path: str, size: int, flag: str = "--ref_image") -> torch.Tensor:
    """Any image file -> (3, size, size) in [-1, 1]; resized (a note is printed) and made RGB."""
    from PIL import Image
    img = open_image(path, flag)
    try:
        img = img.convert("RGB")  # decodes the pixels: a truncated file fails here, not at open()
    except OSError:
        raise InputError(f"{flag} {path}: the image data is truncated or corrupt; re-save it") from None
    if img.size != (size, size):
        print(f"note: {flag} {path} is {img.size[0]}x{img.size[1]}; resized to {size}x{size}")
        img = img.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1).permute(2, 0, 1)   # (3, size, size)


def load_frames(path: str, frames: int, size: int, flag: str) -> torch.Tensor:
    """A .gif/.webp (or any multi-frame image) -> (frames, 3, size, size) in [-1, 1]: resized, the last
    frame held when the animation is short, cut when it is long."""
    from PIL import Image, ImageSequence
    img = open_image(path, flag)
    try:
        out = []
        for f in ImageSequence.Iterator(img):
            out.append(f.convert("RGB").resize((size, size), Image.NEAREST))
            if len(out) == frames:  # an hour-long animation is not decoded past what we use
                break
    except OSError:
        raise InputError(f"{flag} {path}: the animation is truncated or corrupt; re-save it (.gif or .webp)") from None
    if len(out) < frames:
        print(f"note: {flag} {path} has {len(out)} frames; the last one is repeated to {frames}")
    out = (out + out[-1:] * frames)[:frames]
    return torch.from_numpy(np.stack([np.asarray(f, np.float32) for f in out]) / 127.5 - 1).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------------
# Motion requests (DreamVideo-Omni): boxes and tracked points per subject, as JSON
# ------------------------------------------------------------------------------------------------

POINT_NAMES = ("head", "mouth", "shirt")   # data.POINTS
# where the toy's sprites carry each point inside their box (fractions of its height): for a request that
# gives only boxes, the points follow from them
POINT_HEIGHT = {"head": 0.3, "mouth": 0.45, "shirt": 0.85}


def load_motion(path: str, subjects: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A motion request -> (boxes (1, K, T, 4), points (1, K, T, 3, 2)), fractions of the frame.

    {"subjects": [{"box": [x0, y0, x1, y1]}                 held for every frame, or
                  {"boxes": [[x0, y0, x1, y1], ...]}         one per frame,
                  optional "points": {"mouth": [[x, y], ...], ...}  one per frame], one entry per <subk>}
    Coordinates are fractions of the frame (0 = left/top, 1 = right/bottom)."""
    import json
    existing_file(path, "--motion")
    try:
        with open(path) as f:
            subjects_json = json.load(f)["subjects"]
        boxes = torch.zeros(subjects, frames, 4)
        points = torch.zeros(subjects, frames, len(POINT_NAMES), 2)
        if len(subjects_json) != subjects:
            raise InputError(f"--motion {path}: {len(subjects_json)} subject(s), the caption names {subjects}")
        for k, subject in enumerate(subjects_json):
            box = torch.tensor(subject["boxes"] if "boxes" in subject else [subject["box"]] * frames, dtype=torch.float)
            if box.shape != (frames, 4) or not ((0 <= box) & (box <= 1)).all() or (box[:, 2:] <= box[:, :2]).any():
                raise InputError(f"--motion {path}: subject {k + 1} needs one box or {frames} boxes [x0, y0, x1, y1] "
                                 "with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
            boxes[k] = box
            named = subject.get("points", {})
            if not isinstance(named, dict) or set(named) - set(POINT_NAMES):
                wrong = sorted(set(named) - set(POINT_NAMES)) if isinstance(named, dict) else "a list"
                raise InputError(f"--motion {path}: subject {k + 1}'s points are {wrong}; give an object "
                                 f"{{name: [[x, y], ...]}} with names among {', '.join(POINT_NAMES)}")
            for p, name in enumerate(POINT_NAMES):
                if name not in named:  # from the box: centred, at the height the toy's sprites carry it
                    points[k, :, p] = torch.stack([(box[:, 0] + box[:, 2]) / 2,
                                                   box[:, 1] + POINT_HEIGHT[name] * (box[:, 3] - box[:, 1])], -1)
                    continue
                given = torch.tensor(named[name], dtype=torch.float)
                if given.shape != (frames, 2) or not ((0 <= given) & (given <= 1)).all():  # NaN fails both tests
                    raise InputError(f"--motion {path}: subject {k + 1}'s {name} needs {frames} points [x, y] inside "
                                     "the frame (fractions, 0 to 1)")
                points[k, :, p] = given
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as e:
        raise InputError(f"--motion {path}: not a motion request ({type(e).__name__}: {e}); see inputs.load_motion") from None
    return boxes[None], points[None]


# ------------------------------------------------------------------------------------------------
# Wav files
# ------------------------------------------------------------------------------------------------

PCM, IEEE_FLOAT, EXTENSIBLE = 0x0001, 0x0003, 0xFFFE   # WAVE format tags (Microsoft's RIFF spec)
# (format, bits per sample) -> numpy dtype; 24-bit PCM has none and is unpacked by hand
SAMPLE_DTYPES = {(PCM, 8): np.uint8, (PCM, 16): "<i2", (PCM, 32): "<i4", (IEEE_FLOAT, 32): "<f4", (IEEE_FLOAT, 64): "<f8"}
MIN_RATE, MAX_RATE = 4000, 384000   # below a telephone's 8 kHz / above studio 384 kHz is a broken header
CONVERT = "convert it, e.g. ffmpeg -i IN -ac 1 -c:a pcm_s16le OUT.wav"


def riff_chunks(blob: bytes, path: str, flag: str) -> dict:
    """{chunk id: bytes} of a RIFF/WAVE file. A data chunk longer than the file (streaming writers leave
    its size unset) is cut to what is there; chunks are word-aligned (a pad byte after odd sizes)."""
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise InputError(f"{flag} {path}: not a .wav file (no RIFF/WAVE header); {CONVERT}")
    chunks, pos = {}, 12
    while pos + 8 <= len(blob):
        cid, size = blob[pos:pos + 4], struct.unpack("<I", blob[pos + 4:pos + 8])[0]
        chunks.setdefault(cid, blob[pos + 8: pos + 8 + size])
        pos += 8 + size + (size & 1)
    for cid in (b"fmt ", b"data"):
        if cid not in chunks:
            raise InputError(f"{flag} {path}: the wav has no '{cid.decode().strip()}' chunk (truncated?); {CONVERT}")
    return chunks


def wav_format(fmt: bytes, path: str, flag: str) -> tuple[int, int, int, int]:
    """(format tag, channels, rate, bits) from a fmt chunk; EXTENSIBLE resolves to its sub-format."""
    if len(fmt) < 16:
        raise InputError(f"{flag} {path}: the wav's format chunk is truncated; {CONVERT}")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]   # the sub-format GUID starts with the plain tag
    if (tag, bits) not in SAMPLE_DTYPES and (tag, bits) != (PCM, 24):
        kind = {PCM: "integer PCM", IEEE_FLOAT: "float"}.get(tag, f"format 0x{tag:04x} (compressed or A/mu-law)")
        raise InputError(f"{flag} {path}: {bits}-bit {kind} audio is not read here "
                         f"(8/16/24/32-bit PCM or 32/64-bit float are); {CONVERT}")
    if channels < 1:
        raise InputError(f"{flag} {path}: the wav header says 0 channels; {CONVERT}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InputError(f"{flag} {path}: the wav header says {rate} Hz (readable: {MIN_RATE}-{MAX_RATE} Hz); "
                         f"{CONVERT.replace('-ac 1', '-ac 1 -ar 16000')}")
    return tag, channels, rate, bits


def decode_samples(raw: bytes, tag: int, bits: int) -> np.ndarray:
    """Little-endian sample bytes -> float32 in [-1, 1]."""
    if (tag, bits) == (PCM, 24):  # numpy has no int24: pad a zero low byte, read as int32
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        return (np.pad(b, ((0, 0), (1, 0))).view("<i4")[:, 0] / 2 ** 31).astype(np.float32)
    x = np.frombuffer(raw, SAMPLE_DTYPES[(tag, bits)]).astype(np.float32)
    if tag == IEEE_FLOAT:
        return x
    return (x - 128) / 128 if bits == 8 else x / 2 ** (bits - 1)   # 8-bit PCM is unsigned


def resample(wav: torch.Tensor, rate: int, target: int, path: str, flag: str) -> torch.Tensor:
    """Resample with torchaudio's windowed sinc. Its kernel has rate/gcd taps per output phase, so an
    odd rate (44,101 Hz against 16,000: gcd 1) would build a 44,101-row kernel and take minutes; such
    a rate is read as the nearest multiple of 50 Hz (an error of at most 25 Hz in 4,000+, inaudible)."""
    import torchaudio.functional as AF
    if math.gcd(rate, target) < 50:
        near = max(50, round(rate / 50) * 50)
        print(f"note: {flag} {path} is {rate} Hz; read as {near} Hz ({abs(near - rate) / rate:.2%} pitch change)")
        rate = near
    print(f"note: {flag} {path} is {rate} Hz; resampled to {target} Hz")
    return AF.resample(wav, rate, target)


def load_wav(path: str, sample_rate: int, max_seconds: float | None = None, flag: str = "--ref_audio") -> torch.Tensor:
    """A .wav (integer PCM 8/16/24/32-bit, float 32/64-bit, plain or EXTENSIBLE, any rate and channels)
    -> mono float waveform at `sample_rate`. Only the first `max_seconds` are decoded."""
    existing_file(path, flag)
    with open(path, "rb") as f:
        head = f.read(1 << 16)  # the header chunks sit in the first few hundred bytes
        if head[:4] == b"RIFF" and max_seconds is None:
            head += f.read()
        elif head[:4] == b"RIFF":   # enough bytes for max_seconds at the highest rate, 8 channels of float64
            head += f.read(int(max_seconds * MAX_RATE * 8 * 8))
    chunks = riff_chunks(head, path, flag)
    tag, channels, rate, bits = wav_format(chunks[b"fmt "], path, flag)
    frame = channels * bits // 8
    raw = chunks[b"data"]
    if max_seconds is not None:
        raw = raw[: int(math.ceil(max_seconds * rate)) * frame]
    if len(raw) % frame:  # a partial last frame (an odd byte count): the file was cut short, or written carelessly
        print(f"note: {flag} {path}: the audio ends in {len(raw) % frame} stray byte(s) of a partial sample, "
              "dropped (a truncated file?)")
        raw = raw[: len(raw) // frame * frame]
    if not raw:
        raise InputError(f"{flag} {path}: the file holds no audio")
    pcm = decode_samples(raw, tag, bits)
    if not np.isfinite(pcm).all():
        raise InputError(f"{flag} {path}: the float samples include NaN or inf; re-export the audio")
    wav = torch.from_numpy(pcm.reshape(-1, channels).mean(1))     # (samples,): interleaved channels, averaged
    if channels > 1:
        print(f"note: {flag} {path} has {channels} channels; mixed down to mono")
    if rate != sample_rate:
        wav = resample(wav, rate, sample_rate, path, flag)
    return wav
