"""The toy world's speech: phonemes, two languages, source-filter voices, log-mel and its inverse.

17 phonemes written as letters, each with a spectral recipe: vowels by their formants (F1-F3 for a
reference vocal tract), nasals and liquids (voiced, weaker), fricatives (noise bands), bursts (a closure,
then a noise burst). Language A speaks {a e i o u m n l s t k}, language B {a o y r f p h z n}; every
caption letter is pronounceable (b->p, d->t, ...), which is what lets the benchmark hear a model speak
its caption ("caption vocalization").

A voice (data.Identity) is a pitch, a vocal-tract scale (formants / scale), a spectral tilt and a prosody
depth. `synthesize` renders phoneme segments source-filter style: a pulse train at the speaker's pitch
and white noise, both shaped per 7.8 ms control frame in the STFT domain, then inverted. It also
returns each speaker's loudness x vowel openness: the ground truth the lip sync follows.

Audio representation: log-mel through torchaudio (sample rate, n_fft, hop and mel bins from
data.WorldConfig), normalised as (ln(mel + 1e-5) - MEL_MEAN) / MEL_STD; `mel_to_wav` inverts it with
torchaudio's InverseMelScale + Griffin-Lim so generated mel frames can be listened to.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # annotations only: data.py imports this module
    from data import Identity, WorldConfig
# ------------------------------------------------------------------------------------------------
# Phonemes and the two toy languages
# ------------------------------------------------------------------------------------------------
# kind, formants (Hz, for a reference vocal tract) or noise band, amplitude, mouth openness, seconds
PHONEMES = {
    "a": ("vowel", (750, 1250, 2600), 1.0, 1.0, 0.11),
    "e": ("vowel", (450, 1900, 2600), 0.9, 0.6, 0.10),
    "i": ("vowel", (300, 2300, 3000), 0.8, 0.3, 0.10),
    "o": ("vowel", (500, 900, 2500), 0.9, 0.7, 0.11),
    "u": ("vowel", (320, 800, 2300), 0.8, 0.35, 0.10),
    "y": ("vowel", (300, 1700, 2200), 0.8, 0.3, 0.10),
    "m": ("nasal", (250, 1100, 2300), 0.45, 0.0, 0.07),
    "n": ("nasal", (250, 1500, 2500), 0.45, 0.15, 0.07),
    "l": ("liquid", (350, 1200, 2800), 0.6, 0.3, 0.07),
    "r": ("liquid", (450, 1300, 1700), 0.6, 0.35, 0.07),
    "s": ("fricative", (4000, 7500), 0.30, 0.1, 0.09),
    "f": ("fricative", (1200, 7500), 0.14, 0.05, 0.09),
    "h": ("aspirate", (750, 1250, 2600), 0.25, 0.5, 0.07),
    "z": ("voiced_fricative", (3500, 7000), 0.25, 0.1, 0.08),
    "t": ("burst", (3000, 6000), 0.45, 0.1, 0.06),
    "k": ("burst", (1500, 3000), 0.45, 0.1, 0.07),
    "p": ("burst", (300, 1500), 0.45, 0.0, 0.06),
}
PHONEME_SYMBOLS = list(PHONEMES)          # phoneme id = index + 2; 0 = padding, 1 = word gap
PAD_PHONEME, GAP_PHONEME = 0, 1
N_PHONEME_IDS = len(PHONEME_SYMBOLS) + 2
LANGUAGES = {  # (vowels, consonants)
    "A": ("aeiou", "mnlstk"),
    "B": ("aoy", "rfphzn"),
}
# Caption words use all 26 letters; each letter is pronounced as one toy phoneme.
LETTER_SOUND = {c: c for c in PHONEME_SYMBOLS}
LETTER_SOUND.update({"b": "p", "c": "k", "d": "t", "g": "k", "j": "i", "q": "k", "v": "f",
                     "w": "u", "x": "s"})


def phoneme_ids(text: str) -> list[int]:
    """Letters -> phoneme ids (what the TTS/phoneme encoder of ocf.py consumes); spaces -> word gap."""
    ids = []
    for ch in text.lower():
        if ch in LETTER_SOUND:
            ids.append(PHONEME_SYMBOLS.index(LETTER_SOUND[ch]) + 2)
        elif ids and ids[-1] != GAP_PHONEME:
            ids.append(GAP_PHONEME)  # any run of spaces/punctuation is one gap
    return ids[:-1] if ids and ids[-1] == GAP_PHONEME else ids


def make_words(rng: np.random.Generator, language: str, seconds: float) -> str:
    """Pseudo-words of CV / CVC syllables in one language, filling roughly `seconds` of speech."""
    vowels, consonants = LANGUAGES[language]
    words, used = [], 0.0
    while not words or used < seconds:  # at least one word, then words while they fit
        syllables = []
        for _ in range(rng.integers(1, 3)):
            syllables.append(rng.choice(list(consonants)) + rng.choice(list(vowels)))
        word = "".join(syllables)
        if rng.random() < 0.3:
            word += rng.choice(list(consonants))
        cost = sum(PHONEMES[c][4] for c in word) + 0.06  # its phonemes' durations plus the gap after it
        if words and used + cost > seconds:
            break
        words.append(word)
        used += cost
    return " ".join(words)


# ------------------------------------------------------------------------------------------------
# Audio: source-filter synthesis, log-mel and its inverse
# ------------------------------------------------------------------------------------------------
SYNTH_HOP = 125                   # control frames of 7.8 ms: exactly 2 per mel frame
MEL_FLOOR = 1e-5
MEL_MEAN, MEL_STD = -7.2, 3.3     # measured on the world (tests/test_data.py checks): ~zero mean, unit std
_TRANSFORMS: dict = {}            # built once per process: mel filterbanks, Griffin-Lim


def _mel_transform(cfg: WorldConfig):
    key = ("mel", cfg.sample_rate, cfg.n_fft, cfg.hop, cfg.n_mels)
    if key not in _TRANSFORMS:
        import torchaudio  # imported lazily: the model and the trainer never need it
        _TRANSFORMS[key] = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop, n_mels=cfg.n_mels,
            f_min=0.0, f_max=cfg.sample_rate / 2, power=2.0, center=True)
    return _TRANSFORMS[key]


def wav_to_mel(wav: torch.Tensor, cfg) -> torch.Tensor:
    """(..., samples) waveform -> (..., frames, n_mels) normalised log-mel, frames = samples // hop."""
    mel = _mel_transform(cfg)(wav)                           # (..., n_mels, frames + 1) with center=True
    mel = mel[..., : wav.shape[-1] // cfg.hop].transpose(-1, -2)
    return (torch.log(mel + MEL_FLOOR) - MEL_MEAN) / MEL_STD


def mel_to_wav(mel: torch.Tensor, cfg: WorldConfig, iters: int = 32) -> torch.Tensor:
    """(frames, n_mels) normalised log-mel -> waveform, by inverse mel filterbank + Griffin-Lim."""
    import torchaudio
    key = ("inv", cfg.sample_rate, cfg.n_fft, cfg.hop, cfg.n_mels, iters)
    if key not in _TRANSFORMS:
        _TRANSFORMS[key] = (
            torchaudio.transforms.InverseMelScale(n_stft=cfg.n_fft // 2 + 1, n_mels=cfg.n_mels,
                                                  sample_rate=cfg.sample_rate, f_min=0.0,
                                                  f_max=cfg.sample_rate / 2),
            torchaudio.transforms.GriffinLim(n_fft=cfg.n_fft, hop_length=cfg.hop, power=2.0, n_iter=iters))
    inverse_mel, griffin_lim = _TRANSFORMS[key]
    power = (torch.exp(mel.float() * MEL_STD + MEL_MEAN) - MEL_FLOOR).clamp_min(0)  # undo the log
    with torch.random.fork_rng():  # Griffin-Lim starts from random phases: keep callers' RNG intact
        torch.manual_seed(0)
        wav = griffin_lim(inverse_mel(power.T))
    return wav.clamp(-1, 1)


def _spectral_envelope(kind, params, amp, ident: Identity, freqs: np.ndarray):
    """Magnitude response (voiced, noise) of one phoneme for one speaker at the STFT bin freqs."""
    tilt = 10 ** (ident.tilt_db / 20 * np.log2(np.maximum(freqs, 100.0) / 500.0))  # brightness
    zeros = np.zeros_like(freqs)

    def formants(fs, gains=(1.0, 0.6, 0.35)):
        env = np.full_like(freqs, 0.02)
        for f, g in zip(fs, gains):
            f = f / ident.tract_scale                          # longer tract -> lower formants
            env += g * np.exp(-0.5 * ((freqs - f) / (60 + 0.06 * f)) ** 2)
        return env

    def band(lo, hi):
        return ((freqs > lo) & (freqs < hi)).astype(np.float64) * 0.5 + 0.01

    if kind in ("vowel", "liquid", "nasal"):
        return amp * formants(params) * tilt, zeros
    if kind == "aspirate":  # h: breath noise shaped by the vocal tract, no voicing
        return zeros, amp * formants(params)
    if kind == "voiced_fricative":
        return amp * formants((250, 1500, 2500)) * tilt, amp * band(*params)
    return zeros, amp * band(*params)                         # fricative, burst


def synthesize(segments, speakers: list[Identity], n_samples: int, cfg: WorldConfig,
               rng: np.random.Generator, ambient=None):
    """Render phoneme segments [(speaker, symbol, start_s, dur_s)] into one waveform.

    Source-filter: a pulse train at each speaker's pitch and a white-noise source, both shaped per
    7.8 ms control frame in the STFT domain by the current phoneme's envelope, then inverted.
    Returns (wav (n_samples,), mouth_energy (n_speakers, control_frames)) where mouth_energy is
    the speaker's loudness x vowel openness: the ground truth the lip sync follows.
    """
    n_frames = n_samples // SYNTH_HOP + 1                      # torch.stft with center=True gives this many
    freqs = np.fft.rfftfreq(cfg.n_fft, 1 / cfg.sample_rate)    # (257,) bin centres
    voiced_env = np.zeros((n_frames, freqs.size))
    noise_env = np.zeros((n_frames, freqs.size))
    f0 = np.full(n_frames, 120.0)
    mouth = np.zeros((len(speakers), n_frames))
    cache = {}
    for who, sym, start, dur in segments:
        ident = speakers[who]
        kind, params, amp, openness, _ = PHONEMES[sym]
        if (who, sym) not in cache:
            cache[who, sym] = _spectral_envelope(kind, params, amp, ident, freqs)
        v_env, n_env = cache[who, sym]
        # the phoneme's control frames [a, b), with 2-frame ramps so segments join without clicks
        a, b = int(start * cfg.sample_rate / SYNTH_HOP), int((start + dur) * cfg.sample_rate / SYNTH_HOP)
        b = min(max(b, a + 1), n_frames)
        ramp = np.minimum(1.0, np.minimum(np.arange(1, b - a + 1), np.arange(b - a, 0, -1)) / 2.0)
        if kind == "burst":  # closure (silence), then the release burst
            ramp = ramp * (np.arange(b - a) >= 0.55 * (b - a))
        voiced_env[a:b] += ramp[:, None] * v_env
        noise_env[a:b] += ramp[:, None] * n_env
        t = np.arange(a, b) * SYNTH_HOP / cfg.sample_rate
        f0[a:b] = ident.pitch_hz * (1 + ident.prosody * np.sin(2 * np.pi * 2.5 * t + 3 * who))
        mouth[who, a:b] = np.maximum(mouth[who, a:b], ramp * amp * openness)
    if ambient is not None:  # the room's own faint noise colour
        noise_env += ambient["level"] * np.exp(-freqs / ambient["cutoff_hz"])[None]
    # sources: an impulse train following f0 (energy kept independent of pitch) and white noise
    f0_samples = np.repeat(f0, SYNTH_HOP)[:n_samples]
    phase = np.cumsum(f0_samples / cfg.sample_rate)
    pulses = np.diff(np.floor(phase), prepend=0.0) * np.sqrt(cfg.sample_rate / f0_samples)
    sources = torch.from_numpy(np.stack([pulses, rng.standard_normal(n_samples)])).float()
    window = torch.hann_window(cfg.n_fft)
    spec = torch.stft(sources, cfg.n_fft, SYNTH_HOP, window=window, return_complex=True)  # (2, bins, frames)
    shaped = (spec[0] * torch.from_numpy(voiced_env.T).float() * 0.08
              + spec[1] * torch.from_numpy(noise_env.T).float() * 0.35)
    wav = torch.istft(shaped, cfg.n_fft, SYNTH_HOP, window=window, length=n_samples)
    if ambient is not None:  # plus its hum
        t = torch.arange(n_samples) / cfg.sample_rate
        wav = wav + ambient["hum_level"] * torch.sin(2 * math.pi * ambient["hum_hz"] * t)
    return wav.clamp(-1, 1), mouth


def schedule_line(text: str, speaker: int, start: float, rate: float):
    """A line's phoneme segments [(speaker, symbol, start_s, dur_s)] and its end time."""
    segments, t = [], start
    for ch in text:
        if ch == " ":
            t += 0.06 * rate
            continue
        dur = PHONEMES[LETTER_SOUND[ch]][4] * rate
        segments.append((speaker, LETTER_SOUND[ch], t, dur))
        t += dur
    return segments, t


def save_wav(path: str, wav: torch.Tensor, sample_rate: int):
    """16-bit PCM mono .wav with the standard library (no codec backend needed)."""
    import wave
    pcm = (wav.clamp(-1, 1).numpy() * 32767).astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
