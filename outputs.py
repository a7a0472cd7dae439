"""What sample.py writes for a person: the clip as gif + wav (and mp4 with sound when PyAV is installed),
the references, the requested motion drawn over the result, and index.html showing them side by side
(with the toy world's own clip of the case, for --demo).
"""
from __future__ import annotations

import html
import os

import numpy as np
import torch

import data
import speech


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
    """The toy's clip as an .mp4: its 32x32 frames enlarged 8x (nearest) so players show them."""
    return write_clip_mp4(path, frames, wav, world.fps, world.sample_rate, scale=8)


def write_clip_mp4(path: str, frames: np.ndarray, wav: torch.Tensor, fps: int, sample_rate: int, scale: int = 1) -> bool:
    """An .mp4 (H.264 + AAC) through PyAV (optional: `pip install av`); False when it is not installed.
    frames (T, H, W, 3) uint8, wav (samples,) in [-1, 1]; H.264 needs even sides after `scale`."""
    try:
        import av
    except ImportError:
        return False
    with av.open(path, "w") as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = frames.shape[2] * scale, frames.shape[1] * scale, "yuv420p"
        astream = container.add_stream("aac", rate=sample_rate)
        for fr in frames:  # (H, W, 3) uint8 each
            big = np.repeat(np.repeat(fr, scale, 0), scale, 1) if scale > 1 else fr  # nearest: pixels stay crisp
            for packet in vstream.encode(av.VideoFrame.from_ndarray(big, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():  # flush: the encoder holds frames back for its look-ahead
            container.mux(packet)
        pcm = (wav.numpy()[None] * 32767).astype(np.int16)  # (channels=1, samples), packed s16
        audio_frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        audio_frame.sample_rate = sample_rate
        for packet in astream.encode(audio_frame):
            container.mux(packet)
        for packet in astream.encode():  # flush the audio encoder the same way
            container.mux(packet)
    return True


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
