"""Real data: precomputed latent shards, their format, validation and a streaming loader.

The `full` preset trains on latents, not pixels: real runs encode video with the Wan2.2 VAE (48 channels,
stride 4x16x16), audio with the MMAudio 16 kHz VAE (20 channels, ~31.25 latents/s), the whole prompt with
umT5-XXL (4096-d), and the references the same way (one latent frame per reference image, the voice
clip's audio latents). We ship none of those encoders; we define the format (SHARD_FIELDS), check it
(a missing field or a wrong shape stops with one line naming the file and the field), and stream it
(`LatentShards`, the same batch keys as the toy world's `ToyBatches`).
"""
from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass

import numpy as np
import torch

# A shard is one `torch.save`d dict of tensors for N samples (load: weights_only=True); prepare.py writes
# them from a folder of clips. Video: the Wan2.2 VAE's posterior mean (48 ch, stride 4x16x16), normalised per
# channel as Ovi's Wan2_2_VAE does, z = (mu - latents_mean) / latents_std with the 48 means and stds of the
# VAE's config. Audio: the MMAudio 16 kHz VAE's posterior mean (20 ch, 31.25 latents/s; the VAE normalises its
# mel input itself, the latents are not normalised further). Text: umT5-XXL over the whole prompt (4096-d,
# 512 positions, zero past the prompt). References the same way (one latent frame per reference image, the
# voice clip's audio latents). Spans index the umT5 tokens; line_phonemes are characters (caption.character_ids).
# Field -> shape, with N samples, C_v/C_a/D_text from ShardSpec, other letters free but equal in a shard.
SHARD_FIELDS = {
    "video": ("N", "T", "C_v", "H", "W"),           # video latents
    "audio": ("N", "T_a", "C_a"),                   # audio latents
    "text_emb": ("N", "L", "D_text"),               # text encoder output
    "text_mask": ("N", "L"),                        # True = real token
    "ref_images": ("N", "K", "C_v", "H_r", "W_r"),  # one latent frame per reference image
    "ref_audio": ("N", "K", "T_r", "C_a"),          # reference voice latents
    "subject_mask": ("N", "K"),
    "subject_spans": ("N", "K", 2),                 # descriptor token span [start, end) per subject
    "speech_spans": ("N", "M", 2),                  # token span of each <S> ... <E>
    "line_speaker": ("N", "M"),
    "line_mask": ("N", "M"),
    "line_phonemes": ("N", "M", "P"),               # phoneme/character ids of each line (0 = pad)
}


FLOAT_FIELDS = ("video", "audio", "text_emb", "ref_images", "ref_audio")   # any float dtype; read as float32
BOOL_FIELDS = ("text_mask", "subject_mask", "line_mask")                   # True = real; a float mask would be
INDEX_FIELDS = ("subject_spans", "speech_spans", "line_speaker", "line_phonemes")  # read as an additive bias


@dataclass
class ShardSpec:
    C_v: int = 48
    C_a: int = 20
    D_text: int = 4096
    phoneme_vocab: int = 97    # line_phonemes ids are < this: characters (caption.character_ids), as `full` reads them
    patch: tuple = (1, 2, 2)   # the model's video patch (t, h, w) in latents: it must tile T, H, W and H_r, W_r


def spec_for(cfg) -> ShardSpec:
    """What a model (build.ModelConfig) needs of a shard: its channels, prompt width, phoneme table, patch."""
    return ShardSpec(cfg.video_channels, cfg.audio_channels, cfg.text_dim, cfg.phoneme_vocab,
                     (cfg.patch_t, cfg.patch_h, cfg.patch_w))


class ShardError(ValueError):
    """A shard that cannot be used; the message names the file and the field."""


def check_shard(shard: dict, path: str, spec: ShardSpec) -> int:
    """Validate a loaded shard against SHARD_FIELDS; returns N. Raises ShardError (one line)."""
    sizes = dataclasses.asdict(spec)
    for name, dims in SHARD_FIELDS.items():
        if name not in shard:
            raise ShardError(f"{path}: missing field '{name}' (expected shape {dims}); re-export the shard")
        t = shard[name]
        if not isinstance(t, torch.Tensor) or t.dim() != len(dims):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ShardError(f"{path}: field '{name}' has shape {got}, expected {dims}")
        for size, dim in zip(t.shape, dims):
            expect = sizes.get(dim, dim)  # fixed sizes come from the spec, letters must agree
            if isinstance(expect, int) and size != expect:
                raise ShardError(f"{path}: field '{name}' has shape {tuple(t.shape)}, expected {dims} with {dim}={expect}")
            if isinstance(expect, str):
                sizes[dim] = size
    check_patch(sizes, path, spec)
    check_dtypes(shard, path)
    check_indices(shard, path, spec)
    return sizes["N"]


def check_patch(sizes: dict, path: str, spec: ShardSpec):
    """The model's patches must tile the latents exactly (a 720 x 720 clip gives 45 x 45 Wan2.2 latents, which
    2 x 2 patches do not tile: Ovi snaps frame sizes to multiples of 32 pixels, 16 per latent x 2 per patch)."""
    pt, ph, pw = spec.patch
    for field, (t, h, w) in (("video", (sizes["T"], sizes["H"], sizes["W"])), ("ref_images", (pt, sizes["H_r"], sizes["W_r"]))):
        if t % pt or h % ph or w % pw:
            raise ShardError(f"{path}: field '{field}' has {t} x {h} x {w} latents (T x H x W) that the model's "
                             f"{pt} x {ph} x {pw} patches do not tile; encode frames whose sides are multiples of "
                             f"{16 * ph} pixels (Ovi snaps 720 to 704)")


def check_dtypes(shard: dict, path: str):
    """Floats where values are, bools where masks are, integers where indices are. Values are checked for
    NaN / inf per batch (check_finite), where they are read."""
    for name in FLOAT_FIELDS:
        if not shard[name].is_floating_point():
            raise ShardError(f"{path}: field '{name}' is {shard[name].dtype}, expected a float dtype; re-export the shard")
    for name in BOOL_FIELDS:
        if shard[name].dtype != torch.bool:
            raise ShardError(f"{path}: field '{name}' is {shard[name].dtype}; store masks as torch.bool (True = real)")
    for name in INDEX_FIELDS:
        if shard[name].is_floating_point() or shard[name].is_complex() or shard[name].dtype == torch.bool:
            raise ShardError(f"{path}: field '{name}' is {shard[name].dtype}; store indices as torch.long")


def check_indices(shard: dict, path: str, spec: ShardSpec):
    """Every real subject and line, and every span, points inside the sample. Footage without identities (no
    subjects: Ovi's own text-to-audio-video) or without speech (no lines) is fine; a line has phonemes, and a
    reference voice at least one latent frame."""
    n_subjects, n_lines = shard["subject_mask"].shape[1], shard["line_mask"].shape[1]
    empty = (~shard["text_mask"].any(1)).nonzero()
    if len(empty):  # attention over a prompt with no real token has no key at all
        raise ShardError(f"{path}: sample {int(empty[0])} has no real text token (its text_mask is all False); "
                         "an empty prompt is still one token (umT5's end of sequence)")
    if n_lines and shard["line_phonemes"].shape[2] == 0:
        raise ShardError(f"{path}: holds {n_lines} line(s) of 0 phonemes; give each line its phoneme ids")
    if n_subjects and shard["ref_audio"].shape[2] == 0:
        raise ShardError(f"{path}: field 'ref_audio' holds reference voices of 0 latent frames; encode at least one")
    length = shard["text_mask"].shape[1]
    for name, mask in (("subject_spans", shard["subject_mask"]), ("speech_spans", shard["line_mask"])):
        start, end = shard[name][..., 0][mask], shard[name][..., 1][mask]        # real entries only
        if ((start < 0) | (end > length) | (start >= end)).any():
            raise ShardError(f"{path}: field '{name}' has a span outside 0 <= start < end <= {length} (text tokens)")
    speaker = shard["line_speaker"][shard["line_mask"]]
    if ((speaker < 0) | (speaker >= n_subjects)).any():
        raise ShardError(f"{path}: field 'line_speaker' names a subject outside 0..{n_subjects - 1}")
    ids = shard["line_phonemes"]
    if ((ids < 0) | (ids >= spec.phoneme_vocab)).any():
        raise ShardError(f"{path}: field 'line_phonemes' has ids outside 0..{spec.phoneme_vocab - 1} (the model's table)")


def write_shard(path: str, shard: dict, spec: ShardSpec = ShardSpec()):
    """Validate and write a shard atomically (temp file, then rename)."""
    check_shard(shard, path, spec)
    tmp = path + ".tmp"
    torch.save({k: shard[k] for k in SHARD_FIELDS}, tmp)
    os.replace(tmp, path)


def check_finite(batch: dict, path: str):
    """No NaN / inf in the values about to be trained on: one would poison every weight at the first step."""
    for name in FLOAT_FIELDS:
        if not torch.isfinite(batch[name]).all():
            raise ShardError(f"{path}: field '{name}' holds NaN or inf values; re-export the shard")


class LatentShards(torch.utils.data.IterableDataset):
    """Streams batches from precomputed shards, forever, shuffled per epoch with a seed.

    One global sequence of batches g = 0, 1, 2, ... (shards in a seeded order per epoch, samples in a
    seeded order per shard, a batch never spans two shards), the same on every rank. Rank r takes
    g = r, r + world, ... -- so ranks never read the same samples, even with fewer shards than ranks --
    and its DataLoader worker w of W takes every W-th of those, in the order the loader's round-robin
    returns them: the stream is the same for any --workers. `start_batch` (this rank's batches already
    consumed) resumes it. Shards are memory-mapped: a rank reads only the rows of its own batches, and
    checks and converts them (to fp32) in the worker, off the training thread.
    """

    def __init__(self, pattern: str, batch_size: int, spec: ShardSpec = ShardSpec(), seed: int = 0,
                 rank: int = 0, world: int = 1, start_batch: int = 0):
        super().__init__()
        self.paths = sorted(glob.glob(pattern))
        if not self.paths:
            raise ShardError(f"no shard files match {pattern!r}")
        self.batch_size, self.spec, self.seed, self.start_batch = batch_size, spec, seed, start_batch
        self.rank, self.world = rank, world

    @staticmethod
    def open(path: str, spec: ShardSpec) -> dict:
        """A shard memory-mapped, its structure checked (fields, shapes, dtypes, indices); values stay on disk."""
        try:
            shard = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # truncated/corrupt file: say which one, not a pickle traceback
            raise ShardError(f"{path}: cannot be read as a shard ({type(e).__name__}); re-export it") from None
        if not isinstance(shard, dict):
            raise ShardError(f"{path}: holds a {type(shard).__name__}, expected a dict of tensors")
        check_shard(shard, path, spec)
        return {k: v for k, v in shard.items() if k in SHARD_FIELDS}

    @staticmethod
    def rows(shard: dict, idx: torch.Tensor, path: str) -> dict:
        """Samples `idx` of an open shard: read, checked for NaN / inf, floats as fp32."""
        batch = {k: v[idx].float() if k in FLOAT_FIELDS else v[idx] for k, v in shard.items()}
        check_finite(batch, path)
        return batch

    @classmethod
    def load(cls, path: str, spec: ShardSpec) -> dict:
        """A whole shard, checked and in fp32 (tools and tests; training reads rows with `open` and `rows`)."""
        shard = cls.open(path, spec)
        return cls.rows(shard, torch.arange(shard["video"].shape[0]), path)

    def mine(self, g: int, workers: int, worker: int) -> bool:
        """Is global batch g this rank's, at or after start_batch, and this worker's?"""
        k, r = divmod(g, self.world)               # g is rank r's k-th batch
        return r == self.rank and k >= self.start_batch and (k - self.start_batch) % workers == worker

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        g, epoch = 0, 0
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.paths))
            largest = 0  # batches come from one shard at a time: a shard smaller than a batch gives none
            for p in order:
                shard = self.open(self.paths[p], self.spec)
                n = shard["video"].shape[0]
                largest = max(largest, n)
                perm = torch.from_numpy(np.random.default_rng([self.seed, epoch, int(p)]).permutation(n))
                for i in range(0, n - self.batch_size + 1, self.batch_size):
                    if self.mine(g, workers, worker):
                        yield self.rows(shard, perm[i: i + self.batch_size], self.paths[p])
                    g += 1
            if largest < self.batch_size:  # a whole pass without one batch: the next pass would be the same
                raise ShardError(f"no shard of {len(self.paths)} file(s) holds a batch of {self.batch_size} samples "
                                 f"(the largest holds {largest}): lower --batch_size to at most {largest} or "
                                 f"write larger shards")
            epoch += 1
