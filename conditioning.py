"""Everything the twin tower is conditioned on, as one typed object: `Conditioning`.

The model's forward is `TwinTower(video, audio, t, cond)`. `cond` holds what a user gives (the papers'
inputs), never the clip being generated:

  prompt      the structured caption (Omni-Customizer Eq. 2 / DreamID-Omni): token ids (toy) or text
              encoder features (real data), which tokens are real, each subject's descriptor span,
              each <S> ... <E> line's span and its phonemes (for OCF / MTP-CA, Sec. 4.2)
  references  per subject <subk>, one reference image and one reference voice, each with its own
              "present" mask, so a subject can have a voice and no face (the audio-only corpus) or
              have either dropped (classifier-free guidance)
  task inputs DreamID-Omni's RV2AV source video (subject regions blanked + the mask as a channel) and
              RA2V driving audio; None for plain R2AV generation
  motion      DreamVideo-Omni's box of each subject in each frame (toy batches carry them; a model uses
              them only with motion control on)

`Conditioning.from_batch` builds it from a batch of the toy world (data.ToyBatches) or of latent shards
(shards.LatentShards): both use the same keys. The operations training and guidance need are methods,
so both do exactly the same thing:

  drop_prompt(which)                     the empty prompt for the flagged samples (and no lines, no
                                         descriptors, no phonemes: nothing of the caption is left)
  drop_references(which, images, voices) mask the flagged samples' reference images and/or voices out of
                                         every attention (the model then behaves as if they were absent)
  Conditioning.cat([...])                stack several conditionings along the batch: every guidance
                                         pass of a sampling step runs as one batch

Guidance in distribution: training drops the prompt and each kind of reference independently with
probability `cond_drop` (train.py), and the negative passes of (multi-condition) CFG use these same two
methods (sample.py), so every pass asks the model something it was trained on.

This file imports only torch: model.py depends on it, and it depends on nothing of the toy world.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

# The toy tokenizer's padding id (caption.PAD_ID; tests/test_conditioning.py checks they agree). The empty prompt
# of the toy is one attended padding token: its embedding is the learned "null prompt".
NULL_TOKEN = 0


def relative_boxes(batch: dict) -> torch.Tensor | None:
    """A toy batch's per-frame subject boxes (pixels) as fractions of the frame, or None without them."""
    if "boxes" not in batch or "video" not in batch:
        return None
    H, W = batch["video"].shape[-2:]
    return batch["boxes"].float() / torch.tensor([W, H, W, H], dtype=torch.float)


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The one box rasteriser: boxes (..., 4) as (x0, y0, x1, y1) fractions of the frame -> (..., height, width)
    True where a pixel's centre lies inside [x0, x1) x [y0, y1). For the toy's integer pixel boxes divided by
    the frame size this is exactly the pixels [y0:y1, x0:x1]."""
    ys = (torch.arange(height, device=boxes.device) + 0.5) / height                # pixel centres
    xs = (torch.arange(width, device=boxes.device) + 0.5) / width
    b = boxes[..., None, None, :]                                                   # (..., 1, 1, 4)
    return (xs >= b[..., 0]) & (xs < b[..., 2]) & (ys[:, None] >= b[..., 1]) & (ys[:, None] < b[..., 3])


def relative_points(batch: dict) -> torch.Tensor | None:
    """A toy batch's per-frame tracked points (pixels) as fractions of the frame, or None without them."""
    if "trajectories" not in batch or "video" not in batch:
        return None
    H, W = batch["video"].shape[-2:]
    return batch["trajectories"].float() / torch.tensor([W, H], dtype=torch.float)


KEY_MASKS = ("text_mask", "image_mask", "voice_mask")  # the masks that become attention key masks


@dataclass
class Conditioning:
    text: torch.Tensor             # (B, L) token ids (toy) or (B, L, D_text) text features (umT5 for real data)
    text_mask: torch.Tensor        # (B, L) bool, True = real token
    subject_spans: torch.Tensor    # (B, K, 2) descriptor [start, end) of <subk> in the prompt; (0, 0) = none
    speech_spans: torch.Tensor     # (B, M, 2) token span of each <S> ... <E> line
    line_mask: torch.Tensor        # (B, M) bool, True = a real line
    line_phonemes: torch.Tensor    # (B, M, P) phoneme ids of each line (0 = padding)
    phoneme_mask: torch.Tensor     # (B, M, P) bool
    ref_images: torch.Tensor       # (B, K, C, h, w) one clean reference image (latent frame) per subject
    ref_audio: torch.Tensor        # (B, K, T_r, C_a) one clean reference voice per subject
    image_mask: torch.Tensor       # (B, K) bool, subject k's reference image is given
    voice_mask: torch.Tensor       # (B, K) bool, subject k's reference voice is given
    source_video: torch.Tensor | None = None   # (B, T, C+1, H, W) RV2AV: masked source + mask channel
    driving_audio: torch.Tensor | None = None  # (B, T_a, C_a) RA2V: the given sound track
    boxes: torch.Tensor | None = None          # (B, K, T, 4) DreamVideo-Omni: where subject k should be in frame
                                               # t, (x0, y0, x1, y1) as fractions of the frame; zero area = no box
    trajectories: torch.Tensor | None = None   # (B, K, T, P, 2) where subject k's tracked points should be, (x, y)
                                               # fractions of the frame; a point counts where its box is given
    first_frame: torch.Tensor | None = None    # (B, 1, C, h, w) I2AV (Ovi): the first latent frame, given and kept clean
    text_audio: torch.Tensor | None = None     # (B, L, D) the audio tower's prompt where it differs from the video
                                               # tower's: Ovi's negative pass gives each tower its own negative prompt
    full: frozenset = frozenset()              # names of the masks known to be all True, decided on the host
                                               # (`to`): attention then gets no mask and may use flash kernels

    # --- building ---------------------------------------------------------------------------------
    @classmethod
    def from_batch(cls, batch: dict, source_video=None, driving_audio=None) -> "Conditioning":
        """The conditioning of a collated toy batch or a latent-shard batch (the same keys).

        Toy batches carry token ids (`text_ids`), shards carry features (`text_emb`); shards have no
        `phoneme_mask` / `ref_image_mask`, which follow from the phoneme ids and the subject mask.
        """
        subjects = batch["subject_mask"]
        return cls(text=batch["text_emb"] if "text_emb" in batch else batch["text_ids"],
                   text_mask=batch["text_mask"], subject_spans=batch["subject_spans"],
                   speech_spans=batch["speech_spans"], line_mask=batch["line_mask"],
                   line_phonemes=batch["line_phonemes"],
                   phoneme_mask=batch.get("phoneme_mask", batch["line_phonemes"] > 0),
                   ref_images=batch["ref_images"], ref_audio=batch["ref_audio"],
                   image_mask=batch.get("ref_image_mask", subjects), voice_mask=subjects,
                   source_video=source_video, driving_audio=driving_audio, boxes=relative_boxes(batch),
                   trajectories=relative_points(batch))

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    @property
    def subjects(self) -> int:
        return self.ref_images.shape[1]

    def _map(self, fn) -> "Conditioning":
        """A new Conditioning with fn applied to every tensor (None stays None)."""
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})

    def to(self, device) -> "Conditioning":
        """Move to `device`. The host learns here, without waiting for a device, which key masks are all True
        (see `full`): masks still on the CPU are checked; one already on a GPU keeps what was known of it."""
        on_host = {name for name in KEY_MASKS if getattr(self, name).device.type == "cpu"}
        full = frozenset(n for n in on_host if bool(getattr(self, n).all())) | (self.full - on_host)
        return dataclasses.replace(self._map(lambda x: x.to(device, non_blocking=True)), full=full)

    def __getitem__(self, index) -> "Conditioning":
        """The samples `index` (a slice, an index tensor or a bool mask) of every field."""
        return self._map(lambda x: x[index])

    @staticmethod
    def cat(conds: list["Conditioning"]) -> "Conditioning":
        """Concatenate along the batch (the guidance passes of one sampling step, in order)."""
        out = {}
        for f in dataclasses.fields(Conditioning):
            values = [getattr(c, f.name) for c in conds]
            if any(v is None for v in values):  # task inputs: all present or all absent
                if not all(v is None for v in values):
                    raise ValueError(f"Conditioning.cat: {f.name} is given for some parts and not others")
                out[f.name] = None
            elif f.name == "full":  # all True in the whole batch only where all True in every part
                out[f.name] = frozenset.intersection(*values)
            else:
                out[f.name] = torch.cat(values)
        return Conditioning(**out)

    # --- what training and guidance drop ----------------------------------------------------------
    def drop_prompt(self, which: torch.Tensor) -> "Conditioning":
        """The empty prompt for the samples flagged in `which` (B,) bool; the others unchanged.

        Token ids: one attended NULL_TOKEN, everything else padding. Text features: zeros (Ovi's
        negative is the umT5 encoding of a negative prompt; shards carry none, so zeros stand in).
        The caption's structure goes with it: no descriptors, no lines, no phonemes.
        """
        keep = ~which.to(self.text.device)
        if self.text.dim() == 2:
            text = torch.where(keep[:, None], self.text, torch.full_like(self.text, NULL_TOKEN))
            text_mask = self.text_mask & keep[:, None]
            text_mask[:, 0] |= ~keep                        # the null token itself is attended
        else:
            text, text_mask = self.text * keep[:, None, None], self.text_mask
        return dataclasses.replace(self, text=text, text_mask=text_mask,
                                   subject_spans=self.subject_spans * keep[:, None, None],
                                   line_mask=self.line_mask & keep[:, None],
                                   phoneme_mask=self.phoneme_mask & keep[:, None, None],
                                   full=self.full - {"text_mask"})   # no longer known: `to` looks again

    def negative_prompts(self, video: torch.Tensor, audio: torch.Tensor) -> "Conditioning":
        """Ovi's negative pass: every sample's prompt replaced by encoded negative prompts (L, D), one per tower
        (e.g. "jitter, bad hands, blur, distortion" for video, "robotic, muffled, echo, distorted" for audio),
        zero-padded and all attended as Ovi feeds them; the caption's structure dropped as in drop_prompt."""
        B = self.text.shape[0]
        empty = self.drop_prompt(torch.ones(B, dtype=torch.bool))
        expand = lambda x: x.to(self.text.device, self.text.dtype)[None].expand(B, -1, -1)  # noqa: E731
        return dataclasses.replace(empty, text=expand(video), text_audio=expand(audio),
                                   text_mask=torch.ones(B, video.shape[0], dtype=torch.bool, device=self.text.device))

    def drop_references(self, which: torch.Tensor, images: bool = True, voices: bool = True) -> "Conditioning":
        """Mask the flagged samples' reference images and/or voices out of every attention."""
        drop = which.to(self.image_mask.device)[:, None]
        return dataclasses.replace(self, image_mask=self.image_mask & ~drop if images else self.image_mask,
                                   voice_mask=self.voice_mask & ~drop if voices else self.voice_mask,
                                   full=self.full - {"image_mask", "voice_mask"})
