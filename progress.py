"""Watching a run learn: its log, the loss plot, the progress strip, the run's index.html, and when to stop it.

Every --progress_every minutes (and at the end), train.py samples one fixed held-out case -- a single
subject the model has never seen, with cross-pair references, like the benchmark's -- from the EMA
weights, and appends a row to out_dir/progress.png: a few frames and the mel, labelled with the minute
and step. The first row is the world's own clip for that case, so every row is read against the truth.
out_dir/index.html shows the strip next to loss.png and refreshes itself while the run goes on.

Nothing here changes training: the sample draws its own noise (a fixed seed) and leaves the global RNG,
the data streams and the weights alone, so a run with the strip trains exactly like one without.

train.py's log (`Logger`): windows of step statistics kept on the device and written to log.jsonl at log
steps only (the one place that syncs). Stopping: a loss, gradient or weight that turns NaN / inf stops the
run with one line before anything is written after it (`check_finite`), and --max_minutes stops every
rank at the same step (`out_of_time`).
"""
from __future__ import annotations

import html
import json
import math
import os
import time

import torch
import torch.distributed as dist

import build
import checkpoint
import data
import sample as sample_lib
import sharded
from conditioning import Conditioning

STRIP_FRAMES = 4               # frames a row shows, evenly spaced from the first to the last
SCALE = 3                      # pixels per toy pixel in the strip
LABEL_W = 150                  # width of the label column


def ema_model(ema: dict, mcfg: build.ModelConfig, device="cpu"):
    """A plain TwinTower on `device` (the training GPU: sampling a row there takes seconds, on the CPU minutes)
    holding the EMA weights (full tensors: train.py gathers FSDP2 shards)."""
    net = checkpoint.empty_model(mcfg, device)  # no second initialisation: the weights are overwritten at once
    checkpoint.load_state(net, ema, "EMA")
    return net.eval()


def strip_frames(T: int) -> list[int]:
    """Indices of the frames a row shows: 0 and T - 1 and evenly between (16 frames: 0, 5, 10, 15)."""
    return [round(i * (T - 1) / (STRIP_FRAMES - 1)) for i in range(STRIP_FRAMES)]


def row_image(video: torch.Tensor, mel: torch.Tensor, label: str):
    """One strip row: label | chosen frames | mel. video (T, 3, H, W) in [-1, 1], mel (T_mel, n_mels)."""
    from PIL import Image, ImageDraw
    frames = data.to_uint8(video[strip_frames(video.shape[0])])               # (4, H, W, 3)
    sheet = data.contact_sheet(frames, scale=SCALE, columns=STRIP_FRAMES)
    # the mel stretched to the frames' height, two pixels per mel frame: time runs left to right as in the frames
    spectrogram = data.mel_image(mel, scale=1).resize((mel.shape[0] * 2, sheet.height))
    row = Image.new("RGB", (LABEL_W + sheet.width + 8 + spectrogram.width, sheet.height + 4), "white")
    row.paste(sheet, (LABEL_W, 2))
    row.paste(spectrogram, (LABEL_W + sheet.width + 8, 2))
    ImageDraw.Draw(row).multiline_text((4, 4), label, fill="black", spacing=2)
    return row


def append_row(png_path: str, row) -> None:
    """progress.png grows downward by one row (a resumed run continues the same strip)."""
    from PIL import Image
    if os.path.exists(png_path):
        with Image.open(png_path) as old:
            old = old.convert("RGB")
        strip = Image.new("RGB", (max(old.width, row.width), old.height + row.height), "white")
        strip.paste(old, (0, 0))
        strip.paste(row, (0, old.height))
    else:
        strip = row
    tmp = png_path + ".tmp.png"
    strip.save(tmp)
    os.replace(tmp, png_path)  # a reader (the page) never sees half a file


class Progress:
    """The fixed held-out case, and a strip row for the EMA model at a given minute."""

    def __init__(self, out_dir: str, world: data.WorldConfig, shift: float, sample_steps: int = 20, codec=None):
        self.out_dir, self.world, self.shift, self.sample_steps = out_dir, world, shift, sample_steps
        self.codec = codec  # mini-Ovi: sample the codec's latents and decode them (codec.py)
        # the benchmark's first single-subject case: an identity training never sees, cross-pair references
        self.case = data.held_out_case(world, "single", 0)
        self.path = os.path.join(out_dir, "progress.png")

    def start(self):
        """A fresh run: the strip starts with the truth row; the page is written once."""
        if os.path.exists(self.path):  # our own file from an earlier run in this folder
            os.remove(self.path)
        append_row(self.path, row_image(self.case["video"], self.case["audio"], "truth\n(the world's\nown clip)"))
        write_index(self.out_dir, self.case["caption"])

    @torch.no_grad()
    def add(self, net, minutes: float, step: int):
        """Sample the held-out case from `net` (the EMA model, on its device) and append its row."""
        batch = data.collate([self.case])  # a batch of one, as bench.py asks for each case
        w = self.world
        # seed 0 every time: each row starts from the same noise, so rows differ only by the weights
        device = next(net.parameters()).device
        video, mel = sample_lib.sample_pixels(net, Conditioning.from_batch(batch), batch["video"].shape,
                                              batch["audio"].shape, self.codec, steps=self.sample_steps, seed=0,
                                              shift=self.shift, guidance=sample_lib.Guidance(mode="plain"),
                                              device=device)  # as bench samples
        video, mel = video.cpu(), mel.cpu()
        append_row(self.path, row_image(video[0], mel[0], f"minute {minutes:.1f}\nstep {step}\nEMA, CFG, "
                                                          f"{self.sample_steps} steps\n{w.frames} frames: "
                                                          f"{', '.join(str(f) for f in strip_frames(w.frames))}"))


def write_index(out_dir: str, caption: str):
    """The run's page: the progress strip and the loss plot, reloaded every 30 s."""
    page = f"""<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="30">
<title>training {html.escape(out_dir)}</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{image-rendering:pixelated}} code{{white-space:pre-wrap}}</style>
<h2>progress: the EMA model's sample of one held-out case (cross-pair references)</h2>
<p><code>{html.escape(caption)}</code></p>
<p><img src="progress.png"></p>
<h2>loss</h2><p><img src="loss.png"></p>"""
    with open(os.path.join(out_dir, "index.html"), "w") as f:
        f.write(page)


# ------------------------------------------------------------------------------------------------
# The loss plot: log-scale axes with ticks and a legend, drawn with Pillow
# ------------------------------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round numbers (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Round values (1, 2, 5 x 10^k; every digit when that gives fewer than three) whose log10 is in [lo, hi]."""
    for mantissas in ((1, 2, 5), range(1, 10)):
        ticks = [m * 10.0 ** k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in mantissas
                 if lo <= math.log10(m * 10.0 ** k) <= hi]
        if len(ticks) >= 3:
            break
    return ticks


SERIES = {"loss": ("black", "total"), "loss_video": ("blue", "video"), "loss_audio": ("red", "audio"),
          "loss_audio_only": ("orange", "audio-only steps"), "loss_video_only": ("green", "video-only steps")}


def plot_losses(log_path: str, png_path: str, size=(720, 400)):
    """loss.png from log.jsonl: step on x, loss on a log10 y axis, one line per series, ticks and a legend."""
    from PIL import Image, ImageDraw
    if not os.path.exists(log_path):
        return
    records = [json.loads(line) for line in open(log_path)]
    if len(records) < 2:  # a line needs two points
        return
    series = {k: v for k, v in SERIES.items() if all(k in r for r in records)}
    W, H = size
    left, right, top, bottom = 64, 16, 24, 48
    steps = [r["step"] for r in records]
    logs = [math.log10(max(r[k], 1e-6)) for r in records for k in series]
    lo, hi = min(logs), max(logs)
    lo, hi = (lo - 0.05, hi + 0.05) if hi - lo < 0.1 else (lo, hi)
    x_of = lambda s: left + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (W - left - right)  # noqa: E731
    y_of = lambda lv: H - bottom - (lv - lo) / (hi - lo) * (H - top - bottom)                   # noqa: E731
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, top, W - right, H - bottom], outline="grey")
    for s in nice_ticks(steps[0], steps[-1]):                                    # x axis: optimizer steps
        draw.line([(x_of(s), H - bottom), (x_of(s), H - bottom + 4)], fill="black")
        draw.text((x_of(s) - 10, H - bottom + 6), f"{s:g}", fill="black")
    draw.text(((W - left) // 2, H - 18), "optimizer step", fill="black")
    for value in log_ticks(lo, hi):                                              # y axis: the loss, log scale
        y = y_of(math.log10(value))
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.line([(left + 1, y), (W - right - 1, y)], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{value:.3g}", fill="black")
    for key, (colour, _) in series.items():
        draw.line([(x_of(r["step"]), y_of(math.log10(max(r[key], 1e-6)))) for r in records], fill=colour, width=2)
    for i, (colour, name) in enumerate(series.values()):                         # legend, top right
        y = top + 8 + 14 * i
        draw.line([(W - right - 150, y + 6), (W - right - 130, y + 6)], fill=colour, width=3)
        draw.text((W - right - 124, y), name, fill="black")
    draw.text((left, 6), "training loss (log scale)", fill="black")
    img.save(png_path)


CURVE_COLOURS = ("blue", "red", "green", "black", "orange", "purple", "brown", "teal")


def plot_curve(points: list[dict], subset: str, metric_names, png_path: str, size=(720, 400)):
    """A learning curve (bench.py --curve): minutes on x, each metric's fraction of the way from noise (0) to
    truth (1) on y, one line per metric with a fraction; values beyond [-0.5, 1.5] drawn at the edge."""
    from PIL import Image, ImageDraw
    keys = [m for m in metric_names if all(math.isfinite(p.get(f"{subset}/{m}_fraction", math.nan)) for p in points)]
    if len(points) < 2 or not keys:  # a line needs two points
        return
    W, H = size
    left, right, top, bottom = 56, 150, 24, 48
    lo, hi = -0.5, 1.5
    minutes = [p["minute"] for p in points]
    x_of = lambda m: left + (m - minutes[0]) / max(1e-9, minutes[-1] - minutes[0]) * (W - left - right)  # noqa: E731
    y_of = lambda f: H - bottom - (min(hi, max(lo, f)) - lo) / (hi - lo) * (H - top - bottom)           # noqa: E731
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([left, top, W - right, H - bottom], outline="grey")
    for m in nice_ticks(minutes[0], minutes[-1]):                                 # x axis: minutes of training
        draw.line([(x_of(m), H - bottom), (x_of(m), H - bottom + 4)], fill="black")
        draw.text((x_of(m) - 8, H - bottom + 6), f"{m:g}", fill="black")
    draw.text(((W - right) // 2 - 20, H - 18), "minutes of training", fill="black")
    for f in (-0.5, 0.0, 0.5, 1.0, 1.5):                                           # y axis: fraction of the way
        draw.line([(left + 1, y_of(f)), (W - right - 1, y_of(f))], fill=(200, 200, 200) if f in (0, 1) else (235, 235, 235))
        draw.text((4, y_of(f) - 6), {0.0: "noise", 1.0: "truth"}.get(f, f"{f:g}"), fill="black")
    for key, colour in zip(keys, CURVE_COLOURS):
        xy = [(x_of(p["minute"]), y_of(p[f"{subset}/{key}_fraction"])) for p in points]
        draw.line(xy, fill=colour, width=2)
        for x, y in xy:  # a dot per snapshot: the line between two is not a measurement
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for i, (key, colour) in enumerate(zip(keys, CURVE_COLOURS)):                  # legend, right of the plot
        y = top + 8 + 14 * i
        draw.line([(W - right + 10, y + 6), (W - right + 30, y + 6)], fill=colour, width=3)
        draw.text((W - right + 36, y), key, fill="black")
    draw.text((left, 6), f"{subset} cases: fraction of the way from noise to truth", fill="black")
    img.save(png_path)


# ------------------------------------------------------------------------------------------------
# train.py's log: log.jsonl records from device-side windows, the progress strip's timing, the bar
# ------------------------------------------------------------------------------------------------


class Logger:
    """Windows of step statistics kept as device tensors; `write` syncs once, at a log step.

    A record: step, stage, mean losses of the joint steps (total, video, audio), of the audio-only steps and
    of the video-only steps, samples/s of the steps that see video, lr, grad norm, loss by t in quarters
    (minRF's diagnostic), minutes. A window of unimodal pretraining (recipes.py's ovi stage 1) has no joint
    steps: its loss, loss_video and loss_audio are then the video-only and audio-only means."""

    def __init__(self, run, path: str):
        self.run, self.path, self.start = run, path, time.time()
        self.reset()
        if run.log_window:
            self.load(run.log_window)

    def state(self) -> dict:
        """The open window as CPU tensors, saved with the checkpoint: a resumed run's next record covers
        the same steps as an uninterrupted run's (with log_every not dividing ckpt_every it would not)."""
        cat = lambda xs, empty: torch.cat(xs).cpu() if xs else empty  # noqa: E731
        return dict(joint=torch.stack(self.joint).cpu() if self.joint else torch.zeros(0, 3),
                    audio_only=torch.stack(self.audio_only).cpu() if self.audio_only else torch.zeros(0),
                    video_only=torch.stack(self.video_only).cpu() if self.video_only else torch.zeros(0),
                    t=cat(self.t, torch.zeros(0)), per_sample=cat(self.per_sample, torch.zeros(0)),
                    samples=torch.tensor(self.samples),
                    rewards=torch.stack(self.rewards).cpu() if self.rewards else torch.zeros(0))

    def load(self, state: dict):
        device = self.run.device
        self.joint = list(state["joint"].to(device))           # rows of (loss, loss_video, loss_audio)
        self.audio_only = list(state["audio_only"].to(device))
        self.video_only = list(state.get("video_only", torch.zeros(0)).to(device))
        self.t = [state["t"].to(device)] if state["t"].numel() else []
        self.per_sample = [state["per_sample"].to(device)] if state["per_sample"].numel() else []
        self.samples = int(state["samples"])
        self.rewards = list(state.get("rewards", torch.zeros(0)).to(device))

    def reset(self):
        self.joint, self.audio_only, self.video_only, self.t, self.per_sample, self.rewards = [], [], [], [], [], []
        self.samples, self.window_start, self.grad_norm = 0, time.time(), None

    def add(self, out: dict):
        if out["joint"] or out.get("video_only"):  # the steps that see the paired clips
            self.t += out["t"]
            self.per_sample += out["per_sample"]
            self.samples += self.run.tc.batch_size * self.run.tc.grad_accum * self.run.data_world
        if out.get("video_only"):
            self.video_only.append(torch.as_tensor(out["loss_video"], device=self.run.device))
        elif out["joint"]:
            self.joint.append(torch.stack([torch.as_tensor(out[k], device=self.run.device)
                                           for k in ("loss", "loss_video", "loss_audio")]))
            self.rewards += out.get("reward", [])
        else:
            self.audio_only.append(torch.as_tensor(out["loss_audio"], device=self.run.device))
        self.grad_norm = out["grad_norm"]

    def write(self, plan: dict, lr: float) -> dict | None:
        """Append a record to log.jsonl (rank 0) and reset the window; the one place that reads device values."""
        if not (self.joint or self.video_only):
            return None
        mean = lambda xs: torch.stack(xs).mean().item() if xs else 0.0  # noqa: E731
        if self.joint:
            loss, loss_v, loss_a = torch.stack(self.joint).mean(0).tolist()
        else:  # unimodal pretraining: each tower alone
            loss_v, loss_a = mean(self.video_only), mean(self.audio_only)
            loss = loss_v + loss_a
        t = torch.cat(self.t)
        per_sample = torch.cat(self.per_sample).cpu()
        quarter = (t * 4).long().clamp(max=3)
        record = dict(step=self.run.step, stage=plan["stage"], loss=loss, loss_video=loss_v, loss_audio=loss_a,
                      samples_per_s=self.samples / max(time.time() - self.window_start, 1e-9),
                      lr=lr, grad_norm=float(self.grad_norm),
                      loss_by_t={f"{b / 4:.2f}-{(b + 1) / 4:.2f}": per_sample[quarter == b].mean().item()
                                 for b in range(4) if (quarter == b).any()},
                      minutes=(time.time() - self.start) / 60)
        if self.audio_only:
            record["loss_audio_only"] = mean(self.audio_only)
        if self.video_only:
            record["loss_video_only"] = mean(self.video_only)
        if self.rewards:
            record["reward"] = torch.stack(self.rewards).mean().item()
        if self.run.rank == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.reset()
        return record


class ProgressStrip:
    """progress.png / index.html (progress.py): a row every --progress_every minutes of this process's
    training, and one at the end. Toy world only (latent shards have no decoder to look at)."""

    def __init__(self, run):
        self.on = run.tc.progress_every > 0 and run.tc.data == "toy"
        self.next_minute = run.tc.progress_every
        if self.on:
            self.strip = Progress(run.tc.out_dir, run.wcfg, run.tc.t_shift, codec=run.codec)
            if run.rank == 0 and (run.step == 0 or not os.path.exists(self.strip.path)):
                self.strip.start()  # a fresh run (or a resume without a strip): the truth row first

    def maybe_add(self, run, minutes: float, final: bool):
        """Called at log steps on every rank: gathering the EMA is a collective, so all ranks must agree that a
        row is due; their clocks differ slightly, so the decision is all-reduced like out_of_time's."""
        if not self.on:
            return
        due = torch.tensor([float(minutes >= self.next_minute or final)], device=run.device)
        if run.world > 1:
            dist.all_reduce(due, op=dist.ReduceOp.MAX)
        if not due.item():
            return
        while self.next_minute <= minutes:
            self.next_minute += run.tc.progress_every
        ema = {n: checkpoint.full_tensor(p.detach()) for n, p in run.net.named_parameters() if n not in run.ema}  # LoRA's base
        ema.update({n: checkpoint.full_tensor(e) for n, e in run.ema.items()})  # every rank takes part in every gather
        if run.rank == 0:
            self.strip.add(ema_model(ema, run.mcfg, run.device), minutes, run.step)
            plot_losses(os.path.join(run.tc.out_dir, "log.jsonl"), os.path.join(run.tc.out_dir, "loss.png"))
        if run.tc.keep_snapshots:  # the state at this minute, for bench.py --quality (every rank: collectives)
            checkpoint.save_run(run, f"ckpt_minute{minutes:.1f}")


def complete_record(line: str) -> bool:
    """False for the half-written last line a kill during an append leaves behind."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def keep_log_until(path: str, step: int):
    """Keep the log records up to `step` (the checkpoint's): a run killed after logging step 20 but before
    saving step 30 resumes from an earlier save and writes step 20 again; the log must not hold it twice."""
    with open(path) as f:
        kept = [line for line in f if complete_record(line) and json.loads(line)["step"] <= step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def progress_bar(total, initial: int, rank: int):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=rank != 0, dynamic_ncols=True, desc="train")


# ------------------------------------------------------------------------------------------------
# Stopping a run: divergence (checked only where the loop syncs anyway) and --max_minutes
# ------------------------------------------------------------------------------------------------


class Diverged(RuntimeError):
    """The loss or a gradient became NaN / inf; nothing from that step on is saved."""


def track_divergence(first_bad: torch.Tensor, out: dict, step: int) -> torch.Tensor:
    """The first step whose loss or gradient norm was not finite (-1 = none yet), kept on the device so
    watching for NaN costs no sync; it is read at log and checkpoint steps (check_finite)."""
    grad_norm = checkpoint.full_tensor(out["grad_norm"])  # FSDP2: a DTensor scalar (every rank calls this each step)
    finite = torch.isfinite(torch.as_tensor(out["loss"])) & torch.isfinite(grad_norm)
    return torch.where(~finite.to(first_bad.device) & (first_bad < 0), torch.full_like(first_bad, step), first_bad)


def check_finite(run, first_bad: torch.Tensor, lr_of):
    """Stop with one line if any step since the start went non-finite, or if the weights did (a huge step
    can overflow them with finite gradients). Every rank must call it: the verdict is all-reduced."""
    bad = first_bad.clone()
    weights_bad = torch.zeros((), device=run.device)
    for p in run.net.parameters():  # local shards under FSDP2; the all-reduce covers the rest
        weights_bad = torch.maximum(weights_bad, (~torch.isfinite(sharded.local_shard(p).detach())).any().float())
    if run.world > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        dist.all_reduce(weights_bad, op=dist.ReduceOp.MAX)
    if bad.item() >= 0 or weights_bad.item():
        where = f"at step {bad.item() + 1}" if bad.item() >= 0 else f"in the weights by step {run.step}"
        raise Diverged(f"training diverged: NaN/inf {where} (lr {lr_of(max(0, bad.item())):.3g}). Likely a "
                       f"learning rate too high (--lr) or NaN/inf in the data; nothing was saved after it, so "
                       f"{os.path.join(run.tc.out_dir, 'ckpt.pt')} still holds the last finite state")


def out_of_time(run, start: float) -> bool:
    """--max_minutes reached? Every rank must agree to stop, or the next collective hangs."""
    late = run.tc.max_minutes > 0 and (time.time() - start) / 60 >= run.tc.max_minutes
    if run.world > 1:
        flag = torch.tensor([float(late)], device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        late = bool(flag.item())
    return late
