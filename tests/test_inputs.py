"""The user's files (inputs.py): every common wav layout reads to the same waveform; odd rates resample
quickly; only what is used is decoded."""
import struct

import numpy as np
import pytest
import torch

import inputs

SIGNAL = 0.5 * np.sin(np.arange(4000) * 2 * np.pi * 220 / 16000)   # a quarter second of A3 at 16 kHz


def write_wav(path, samples: bytes, tag: int, bits: int, channels=1, rate=16000, extensible=False):
    """A RIFF/WAVE file by hand, as audio programs write them (plain or WAVE_FORMAT_EXTENSIBLE)."""
    block = channels * bits // 8
    if extensible:  # cbSize 22, valid bits, channel mask, then the sub-format GUID (its first 2 bytes: the tag)
        fmt = struct.pack("<HHIIHHHHI", inputs.EXTENSIBLE, channels, rate, rate * block, block, bits, 22, bits, 0)
        fmt += struct.pack("<H", tag) + bytes.fromhex("000000001000800000aa00389b71")
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 3) + b"abc\0"
    body += b"data" + struct.pack("<I", len(samples)) + samples
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return str(path)


def int24(x):
    v = np.round(x * (2 ** 23 - 1)).astype("<i4")
    return v.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()   # the low three bytes of each little-endian int32


LAYOUTS = {
    "16-bit PCM": lambda x: (inputs.PCM, 16, np.round(x * 32767).astype("<i2").tobytes(), False),
    "24-bit PCM": lambda x: (inputs.PCM, 24, int24(x), False),
    "32-bit PCM": lambda x: (inputs.PCM, 32, np.round(x * (2 ** 31 - 1)).astype("<i4").tobytes(), False),
    "8-bit PCM": lambda x: (inputs.PCM, 8, np.round(x * 127 + 128).astype(np.uint8).tobytes(), False),
    "32-bit float": lambda x: (inputs.IEEE_FLOAT, 32, x.astype("<f4").tobytes(), False),
    "64-bit float": lambda x: (inputs.IEEE_FLOAT, 64, x.astype("<f8").tobytes(), False),
    "extensible 16-bit": lambda x: (inputs.PCM, 16, np.round(x * 32767).astype("<i2").tobytes(), True),
    "extensible float": lambda x: (inputs.IEEE_FLOAT, 32, x.astype("<f4").tobytes(), True),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_common_wav_layout_reads_to_the_same_waveform(tmp_path, layout):
    tag, bits, raw, ext = LAYOUTS[layout](SIGNAL)
    wav = inputs.load_wav(write_wav(tmp_path / "a.wav", raw, tag, bits, extensible=ext), 16000)
    tolerance = 1 / 127 if bits == 8 else 1e-4                   # 8-bit quantisation is coarse
    assert wav.shape == (4000,) and torch.allclose(wav, torch.from_numpy(SIGNAL).float(), atol=tolerance)


def test_stereo_is_mixed_down_and_a_partial_last_frame_dropped_with_a_note(tmp_path, capsys):
    stereo = np.stack([SIGNAL, -SIGNAL / 2], 1).reshape(-1)         # interleaved L, R
    raw = np.round(stereo * 32767).astype("<i2").tobytes() + b"\x01"  # one stray byte: an odd byte count
    wav = inputs.load_wav(write_wav(tmp_path / "a.wav", raw, inputs.PCM, 16, channels=2), 16000)
    assert torch.allclose(wav, torch.from_numpy(SIGNAL / 4).float(), atol=1e-4)
    notes = capsys.readouterr().out.splitlines()
    assert any("1 stray byte(s)" in n for n in notes) and any("mixed down to mono" in n for n in notes)


def test_an_odd_rate_resamples_quickly_to_the_right_length(tmp_path):
    """44,101 Hz against 16,000 has gcd 1: torchaudio's kernel would have 44,101 phases (minutes, GBs)."""
    x = np.sin(np.arange(44101) * 2 * np.pi * 220 / 44101)           # one second
    raw = np.round(x * 32767).astype("<i2").tobytes()
    wav = inputs.load_wav(write_wav(tmp_path / "a.wav", raw, inputs.PCM, 16, rate=44101), 16000)
    assert abs(wav.numel() - 16000) <= 1


def test_only_the_seconds_used_are_decoded(tmp_path):
    raw = np.round(np.tile(SIGNAL, 40) * 32767).astype("<i2").tobytes()   # 10 s
    wav = inputs.load_wav(write_wav(tmp_path / "a.wav", raw, inputs.PCM, 16), 16000, max_seconds=0.5)
    assert wav.numel() == 8000


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    from PIL import Image
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")   # ~50 KB on disk, 1.2 GB as RGB
    with pytest.raises(inputs.InputError) as err:
        inputs.load_image(str(tmp_path / "bomb.png"), 16)
    assert "resize it below 8192x8192" in str(err.value)
