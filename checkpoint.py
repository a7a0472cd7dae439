"""Checkpoints into a TwinTower: Ovi's released weights and our own train.py checkpoints.

Every paper here fine-tunes Ovi (its paper and released code), so reading Ovi's checkpoint is where a real
run begins:

  Ovi's release            one .safetensors, a sharded set's index.json, or a folder of them; each tensor is
                           renamed through one key map (OVI_RENAMES) and read through safetensors' memory map,
                           only the rows this rank holds (sharded.copy_rows): an FSDP2-sharded 11.7B model is
                           filled without any rank holding a second full copy
  ours                     train.py's ckpt.pt (model, ema, optimizer, step, rng, model_config,
                           world_config), read with weights_only=True and memory-mapped
  a base + additions       `load_base`: the backbone from either, the paper's new modules (OCF, MTP-CA,
                           motion, identity stream, LoRA adapters) left to their own initialisation,
                           which is zero where they inject, so the run starts from the base's function

Anything that cannot be used -- a truncated file, another tool's layout, a tensor of the wrong shape,
NaN weights, a LoRA file given as a base -- stops with one CheckpointError line naming the file and
the problem.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import re
import zlib

import torch
import torch.distributed as dist

import lora
import recipes
import sharded
from build import PRESETS, ModelConfig, build_model, config_problems
from model import TwinTower


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; one line for the user (every entry point prints it
    as `error: ...` and exits, never a traceback)."""


# ------------------------------------------------------------------------------------------------
# Ovi's released checkpoint: one key map, read with `safetensors` (memory-mapped)
# ------------------------------------------------------------------------------------------------
# Ovi's FusionModel holds video_model and audio_model (Wan-style DiTs, blocks.i each); ours holds TwinLayer i
# with .video and .audio. Inside a block the names are the same (self_attn.{q,k,v,o,norm_q,norm_k}, norm3,
# cross_attn.{q,k,v,o,norm_q,norm_k,k_fusion,v_fusion,norm_k_fusion,pre_attn_norm_fusion}, ffn.0, ffn.2).
OVI_RENAMES = [  # (Ovi's name, ours) as regular expressions; the first match wins
    (r"(video|audio)_model\.blocks\.(\d+)\.modulation\.modulation", r"layers.\2.\1.modulation"),
    (r"(video|audio)_model\.blocks\.(\d+)\.(.+)", r"layers.\2.\1.\3"),
    (r"video_model\.patch_embedding\.(weight|bias)", r"video_stem.\1"),             # Conv3d -> Linear, below
    (r"audio_model\.patch_embedding\.0\.(weight|bias)", r"audio_stem.conv.\1"),     # Conv1d k7 (+ SiLU)
    (r"audio_model\.patch_embedding\.2\.(w[123])\.weight", r"audio_stem.\1.weight"),  # the conv SwiGLU
    (r"(video|audio)_model\.text_embedding\.([02]\.(?:weight|bias))", r"\1_tower.text_proj.\2"),
    (r"(video|audio)_model\.time_embedding\.([02]\.(?:weight|bias))", r"\1_tower.time_embed.\2"),
    (r"(video|audio)_model\.time_projection\.(1\.(?:weight|bias))", r"\1_tower.time_proj.\2"),
    (r"(video|audio)_model\.head\.modulation", r"\1_tower.head_modulation"),
    (r"(video|audio)_model\.head\.head\.(weight|bias)", r"\1_tower.head.\2"),
]


def ovi_to_ours(name: str) -> str | None:
    """Our parameter name for one of Ovi's, or None for a name the map does not know."""
    for pattern, replacement in OVI_RENAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def ovi_files(path: str) -> list[str]:
    """The .safetensors files of Ovi's checkpoint at `path`: one file, a sharded set's index.json, or a
    folder holding either."""
    if os.path.isdir(path):
        found = glob.glob(os.path.join(path, "*.safetensors.index.json")) or glob.glob(os.path.join(path, "*.safetensors"))
        if not found:
            raise CheckpointError(f"{path}: the folder holds no .safetensors file or index")
        return sorted(set(f for p in found for f in ovi_files(p)))
    if path.endswith(".json"):
        try:
            weight_map = json.load(open(path))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"{path}: not a safetensors index (a JSON file with a 'weight_map')") from None
        files = sorted(set(os.path.join(os.path.dirname(path), f) for f in weight_map.values()))
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise CheckpointError(f"{path}: the index names {missing[0]}, which does not exist")
        return files
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    return [path]


def is_ovi_checkpoint(path: str) -> bool:
    """Ovi's release: one .safetensors, a sharded set's index .json, or a folder holding .safetensors."""
    return path.endswith((".safetensors", ".json")) or (os.path.isdir(path) and
                                                        bool(glob.glob(os.path.join(path, "*.safetensors"))))


def load_ovi_weights(net: TwinTower, path: str, log=print) -> dict:
    """Fill `net`'s backbone from Ovi's released weights; our additions keep their own initialisation.

    Works on a plain model and on FSDP2 shards alike: each tensor is read through safetensors' memory
    map, and only the rows this rank holds (`copy_rows`), so no rank ever holds a second full copy.
    A name the map does not know, a shape that does not fit or a backbone weight the files lack stops
    with one line naming it. Returns {"loaded": [our names], "fresh": [our names]}.
    """
    from safetensors import safe_open
    ours = dict(net.named_parameters())
    loaded = []
    for file in ovi_files(path):
        try:
            reader = safe_open(file, framework="pt", device="cpu")
        except Exception as e:  # safetensors' own error, or the OS's: one line either way
            raise CheckpointError(f"{file}: not a readable .safetensors file ({str(e).splitlines()[0][:80]})") from None
        with reader:
            for key in reader.keys():
                name = ovi_to_ours(key)
                if name is None or name not in ours:
                    raise CheckpointError(f"{file}: unknown tensor '{key}' (not in Ovi's layout; is this Ovi's FusionModel?)")
                loaded.append(name)
                sharded.copy_rows(ours[name], ovi_reader(reader.get_slice(key), key, ours[name], file))
    fresh = [n for n in ours if n not in set(loaded)]
    missing = [n for n in fresh if not (net.is_addition(n) or lora.is_adapter(n))]
    if missing:
        raise CheckpointError(f"{path}: lacks {len(missing)} backbone tensor(s), e.g. '{missing[0]}' (a shard missing?)")
    prefixes = sorted({".".join(n.split(".")[:2 if n.startswith("prompt.") else 1]) for n in fresh})  # modules
    log(f"loaded {len(loaded)} tensors ({sum(ours[n].numel() for n in loaded):,d} parameters) from Ovi's checkpoint "
        f"{path}; initialised fresh: {', '.join(prefixes) or 'nothing'}")
    return dict(loaded=loaded, fresh=fresh)


def ovi_reader(tensor_slice, key: str, param, file: str):
    """read_rows(start, end) for one of Ovi's tensors, after checking its shape against ours.

    The one reshape: Ovi's video patch embedding is a Conv3d (D, C, pt, ph, pw) with kernel = stride; as
    our Linear over tokens ordered (pt, ph, pw, C) it is weight.permute(0, 2, 3, 4, 1).reshape(D, -1)."""
    shape = tuple(tensor_slice.get_shape())
    conv3d = key == "video_model.patch_embedding.weight"
    fits = (shape[0], math.prod(shape[1:])) == tuple(param.shape) if conv3d else shape == tuple(param.shape)
    if not fits:
        raise CheckpointError(f"{file}: '{key}' has shape {shape}, the model expects {tuple(param.shape)} "
                              f"(use --config full, Ovi's size)")
    if conv3d:
        return lambda a, b: tensor_slice[a:b].permute(0, 2, 3, 4, 1).reshape(b - a, -1)
    return lambda a, b: tensor_slice[a:b]


# ------------------------------------------------------------------------------------------------
# Our own checkpoints (train.py writes them)
# ------------------------------------------------------------------------------------------------


def load_checkpoint(path: str, need: tuple = (), verify: bool = True) -> dict:
    """torch.load with weights_only=True, memory-mapped (tensors are read when used); a corrupt or
    foreign file, or one that lacks an entry in `need` (e.g. a resume needs "optimizer"), stops with one
    clear line. verify=False skips the checksum pass (a caller that reads the weights later verifies then)."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint; train one with train.py --out_dir ...")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder with no .safetensors (Ovi's) in it; give a checkpoint file, "
                              f"e.g. {os.path.join(path, 'ckpt.pt')}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}); "
                              "it may be truncated - use an earlier one or retrain") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path}: is not a checkpoint written by train.py")
    for key in ("model", "ema"):
        state = ckpt.get(key, {})
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: its '{key}' is not a dict of tensors; not written by train.py")
    missing = [key for key in need if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: lacks '{missing[0]}' (train.py writes model, ema, optimizer, step, rng, "
                              "model_config, world_config); it was written by another tool or an older version")
    for key, kind in RECORD_TYPES.items():  # a resume or sample.py would trip over a wrong type deep inside
        value = ckpt.get(key)
        if key in ckpt and (not isinstance(value, kind) or kind is int and isinstance(value, bool)):
            raise CheckpointError(f"{path}: its '{key}' is a {type(value).__name__}, not a {kind.__name__}; "
                                  "not written by train.py")
    if verify:
        verify_checksums(ckpt, path)
    return ckpt


# What a run's record holds besides the tensors, by type (load_checkpoint checks them)
RECORD_TYPES = {"step": int, "rng": torch.Tensor, "stage": int, "optimizer": dict, "model_config": dict,
                "world_config": dict, "train_config": dict, "lora_base": str, "lora_base_fingerprint": str,
                "checksums": dict, "codec": dict}


# ------------------------------------------------------------------------------------------------
# Checksums: a flipped byte in a checkpoint is found when it is read, not sampled from
# ------------------------------------------------------------------------------------------------


def tensor_checksums(obj: dict) -> dict:
    """{"model/NAME": crc32, "ema/NAME": crc32} of the raw bytes of every weight a checkpoint holds. zlib's crc32
    ran at 3.9 GB/s on one core here: 2 ms for the toy's checkpoint, about 25 s for a full-size model + EMA
    (94 GB in fp32), paid at every save and load of a ckpt.pt (sharded checkpoints are DCP's own business)."""
    parts = {part: obj.get(part) or {} for part in ("model", "ema", "backbone")}  # backbone: reward.LatentLIRM's
    parts["codec"] = (obj.get("codec") or {}).get("weights") or {}  # mini-Ovi's codec decodes every sample
    return {f"{part}/{name}": zlib.crc32(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            for part, tensors in parts.items() for name, t in tensors.items()}  # raw bytes: any dtype, bf16 included


def verify_checksums(ckpt: dict, path: str):
    """Recompute the checksums a checkpoint was written with (older checkpoints have none: nothing to check)."""
    if "checksums" not in ckpt:
        return
    now = tensor_checksums(ckpt)
    bad = sorted(key for key, crc in ckpt["checksums"].items() if now.get(key) != crc)
    if bad:
        raise CheckpointError(f"{path}: tensor '{bad[0]}' does not match its checksum ({len(bad)} damaged): the file "
                              "was corrupted on disk or in transfer; use an earlier checkpoint or copy it again")


def fingerprint(path: str) -> str:
    """A short identity of a base checkpoint's weights (a LoRA run records its base's): ours, from the checksums
    it stores; Ovi's safetensors, from their headers (names, shapes, offsets) and sizes. A base trained on since
    the adapters were made has another fingerprint, and sample.py / a resume refuse it."""
    h = hashlib.sha256()
    if is_ovi_checkpoint(path):
        for file in ovi_files(path):
            with open(file, "rb") as f:
                n = int.from_bytes(f.read(8), "little")  # safetensors: an 8-byte header length, then the header
                h.update(f.read(min(n, 100_000_000)))
            h.update(str(os.path.getsize(file)).encode())
    else:
        # the stored checksums name the weights without reading them; loading the base (load_base) verifies them
        ckpt = load_checkpoint(path, verify=False)
        h.update(json.dumps(ckpt.get("checksums") or tensor_checksums(ckpt), sort_keys=True).encode())
    return h.hexdigest()[:16]


def check_fingerprint(ckpt: dict, base: str, path: str):
    """A LoRA checkpoint's adapters belong to the base it recorded; stop if that file holds other weights now."""
    recorded = ckpt.get("lora_base_fingerprint")
    if recorded and fingerprint(base) != recorded:
        raise CheckpointError(f"{path}: its adapters were trained on {base} as it was then; that file holds other "
                              "weights now (trained on since?); give the base it was trained from")


def check_finite(state: dict, path: str):
    """A checkpoint whose weights hold NaN or inf would only make noise (or crash deep in Griffin-Lim)."""
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: weight '{name}' holds NaN or inf (a diverged run); use an earlier "
                                  "checkpoint, e.g. a ckpt_minute*.pt snapshot")


def dataclass_from_checkpoint(cls, fields, path: str, problems=None):
    """A config dataclass from a checkpoint's dict of its fields (model_config, world_config): an unknown
    key, a value of the wrong type or one that `problems` refuses stops with one line."""
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path}: its {cls.__name__} is a {type(fields).__name__}, not a dict; not written by train.py")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise CheckpointError(f"{path}: its {cls.__name__} has unknown key(s) {unknown}: written by another version "
                              "of this code")
    for name, value in fields.items():  # bool is an int in Python; anything else must match the default's type
        default = known[name].default
        if not isinstance(value, type(default)) and not (isinstance(default, float) and isinstance(value, int)):
            raise CheckpointError(f"{path}: its {cls.__name__}.{name} is {value!r}, expected a {type(default).__name__}")
    cfg = cls(**fields)
    bad = problems(cfg) if problems else []
    if bad:
        raise CheckpointError(f"{path}: its {cls.__name__} cannot build a model ({bad[0]})")
    return cfg


# Switches that were removed (in no paper; measured harmful or inconclusive, docs/experiments.md): a checkpoint
# that has them at the value the model now always has loads; one trained with them on cannot be rebuilt.
RETIRED = {"input_skip": False, "precond": "none", "sigma_video": None, "sigma_audio": None}


def world_from_checkpoint(ckpt: dict, path: str = "checkpoint"):
    """The toy world a checkpoint was trained on, checked like the flags: its own limits, and (a pixel model)
    that its model's patches tile its frames and its audio channels are its mels."""
    import data  # the toy world; only toy checkpoints carry one
    fields = ckpt["world_config"]
    if isinstance(fields, dict) and "tokenizer" not in fields:  # written before the pair tokenizer: characters
        fields = dict(fields, tokenizer="chars")
    world = dataclass_from_checkpoint(data.WorldConfig, fields, path, data.world_problems)
    cfg = config_from_checkpoint(ckpt, path)
    latent = codec_from_checkpoint(ckpt, path)
    bad = data.model_fit_problems(cfg, world, "its", latent.cfg if latent else None) \
        if cfg.video_channels == 3 or latent else []
    if bad:
        raise CheckpointError(f"{path}: its world does not fit its model ({bad[0]}); not written by train.py")
    return world


def codec_from_checkpoint(ckpt: dict, path: str = "checkpoint"):
    """The toy latent codec a mini-Ovi checkpoint carries (codec.py), or None for pixel and real-data models."""
    if "codec" not in ckpt:
        return None
    import codec  # the toy's codecs; only mini-Ovi checkpoints carry one
    try:
        return codec.ToyCodec.from_state(ckpt["codec"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its codec cannot be rebuilt ({type(e).__name__}); not written by train.py") from None


def config_from_checkpoint(ckpt: dict, path: str = "checkpoint") -> ModelConfig:
    """The ModelConfig a checkpoint was trained with (checked like the command line's)."""
    fields = ckpt["model_config"]
    if isinstance(fields, dict):
        for name, neutral in RETIRED.items():
            if name in fields and neutral is not None and fields[name] != neutral:
                raise CheckpointError(f"{path}: was trained with --{name} {fields[name]}, a switch this version no "
                                      "longer has (docs/experiments.md); train it again without")
        fields = {n: v for n, v in fields.items() if n not in RETIRED}
    return dataclass_from_checkpoint(ModelConfig, fields, path, config_problems)


def load_state(net: TwinTower, state: dict, what: str = "checkpoint", names=None):
    """Copy a state dict into net (plain or FSDP2 shards), checking names and shapes first (one line).
    `names`: the parameters the state must hold (default: all; a LoRA checkpoint holds what trains)."""
    ours = {n: p for n, p in net.named_parameters() if names is None or n in names}
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(dict(net.named_parameters())))
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise CheckpointError(f"{what}: {'lacks' if missing else 'has an unknown'} tensor '{name}' "
                              f"({len(missing)} missing, {len(unexpected)} unknown): saved by another model layout")
    for name, p in ours.items():
        if tuple(state[name].shape) != tuple(p.shape):
            raise CheckpointError(f"{what}: '{name}' has shape {tuple(state[name].shape)}, the model expects "
                                  f"{tuple(p.shape)} (trained with other --config / size flags?)")
        sharded.copy_rows(p, lambda a, b, t=state[name]: t[a:b])


def load_base(net: TwinTower, path: str, log=print, ckpt: dict | None = None) -> set:
    """The base weights from `path` -- Ovi's release, or our checkpoint's `model` (a full fine-tune; `ckpt`
    when already read) -- into `net`. Returns the names the base does not hold (adapters, additions): the
    caller initialises those. Any other missing tensor means another model layout, and stops."""
    if is_ovi_checkpoint(path):
        return set(load_ovi_weights(net, path, log=log)["fresh"])
    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    if ckpt["model_config"].get("lora_rank"):  # it holds adapters, not a base: loading it would lose the base
        raise CheckpointError(f"{path}: is a LoRA checkpoint (adapters of {ckpt.get('lora_base', '?')}); adapt a full "
                              "checkpoint or Ovi's weights")
    base = ckpt["model"]
    held = {n for n, _ in net.named_parameters() if n in base}
    fresh = {n for n, _ in net.named_parameters()} - held
    with torch.device("meta"):  # what the checkpoint's own model holds: all of it must be there
        saved = {n for n, _ in build_model(config_from_checkpoint(ckpt, path)).named_parameters()}
    # fresh may be only what the command line adds (a paper's modules, adapters); a tensor the saved model has
    # -- backbone or addition -- missing from the file means a damaged or foreign checkpoint
    lacking = sorted(n for n in fresh if n in saved or not (net.is_addition(n) or lora.is_adapter(n)))
    if lacking:
        raise CheckpointError(f"{path}: lacks tensor '{lacking[0]}' ({len(lacking)} missing): a damaged checkpoint, "
                              "or one of another model layout")
    load_state(net, base, path, names=held)
    return fresh


def empty_model(cfg: ModelConfig, device, dtype=torch.float32) -> TwinTower:
    """A model with storage but no values, in `dtype` (bf16: Ovi's 23 GB instead of 47): built on the meta
    device, so no 11.7B random numbers are drawn first only to be overwritten (~2 minutes at full size)."""
    with torch.device("meta"):
        net = build_model(cfg)
    return net.to_empty(device=device).to(dtype)


def model_from_checkpoint(path: str, use_ema: bool = True, device="cpu", dtype=torch.float32) -> TwinTower:
    """An eval-mode model from our checkpoint (EMA weights by default) or from Ovi's safetensors (`full`),
    its weights in `dtype` (sample.py --precision bf16: bf16; norms and modulation still compute in fp32)."""
    if is_ovi_checkpoint(path):
        net = empty_model(PRESETS["full"], device, dtype)
        net.init_weights(only=load_ovi_weights(net, path)["fresh"])
        return net.eval()
    ckpt = load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt, path)
    # the EMA holds what trained; weights held fixed (--freeze_text) are only in `model`, and did not move
    state = dict(ckpt["model"], **ckpt["ema"]) if use_ema and ckpt.get("ema") else ckpt["model"]
    check_finite(state, path)
    if cfg.lora_rank:  # adapters and new modules here; the frozen base where training read it from
        if "lora_base" not in ckpt:
            raise CheckpointError(f"{path}: a LoRA checkpoint without 'lora_base' (the weights it adapts)")
        check_fingerprint(ckpt, ckpt["lora_base"], path)
        net = empty_model(cfg, "cpu")  # merging adapters (sample.py --merge_lora) wants fp32 first
        net.init_weights(only=load_base(net, ckpt["lora_base"], log=lambda *_: None))
        load_state(net, state, path, names={n for n, _ in net.named_parameters() if lora.trains(net, n)})
        return net.to(device, dtype).eval()
    net = empty_model(cfg, device, dtype)
    load_state(net, state, path)  # every parameter: load_state refuses a state that lacks one
    return net.eval()


# ------------------------------------------------------------------------------------------------
# A training run's checkpoint: written atomically by every rank, resumed exactly (train.py)
# ------------------------------------------------------------------------------------------------


def save_atomic(obj, path: str):
    """Write to a temp file in the same folder, then rename: a crash never leaves half a file. A checkpoint's
    weights are written with their checksums (load_checkpoint verifies them)."""
    if "model" in obj:
        obj = dict(obj, checksums=tensor_checksums(obj))
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def full_tensor(x):
    """A plain tensor from a DTensor (FSDP2 shard; a collective: every rank calls it) or a tensor."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x

RESUME_NEEDS = ("optimizer", "step", "rng", "world_config")  # what a resume reads besides the weights


def remove_partial_writes(out_dir: str):
    """A kill during save_atomic / append_row leaves NAME.tmp (or NAME.tmp.png) beside the intact file:
    harmless, but clutter; remove ours (only names this program writes) when the run starts again."""
    for path in sum((glob.glob(os.path.join(out_dir, p)) for p in ("*.pt.tmp", "*.jsonl.tmp", "*.png.tmp.png")), []):
        os.remove(path)
        print(f"note: removed {path}, a partial write left by an interrupted run")


def resume_point(tc, rank: int, world: int) -> str:
    """Where this run resumes from: its sharded folder (FSDP2 runs), its ckpt.pt, or "" (a fresh run).
    Rank 0 looks and every rank follows, so the ranks never disagree (nodes without a shared filesystem
    would; a rank that cannot then read the checkpoint stops with one line)."""
    folder, path = os.path.join(tc.out_dir, sharded.NAME), os.path.join(tc.out_dir, "ckpt.pt")
    found = [""]
    if rank == 0:
        sharded.recover(folder)
        if tc.fsdp and world > 1 and os.path.isdir(folder):
            found = [folder]
        elif os.path.exists(path):  # a DDP or one-process run; or an FSDP2 run saved whole by an older version
            found = [path]
    if world > 1:
        dist.broadcast_object_list(found, src=0)
    return found[0]


def read_resume(point: str) -> dict | None:
    """The resumed run's record: ckpt.pt whole, or a sharded folder's meta.pt (its tensors load after wrapping)."""
    if not point:
        return None
    if os.path.basename(point) == sharded.NAME:
        return dict(sharded.read_meta(point), sharded=point)
    return load_checkpoint(point, need=RESUME_NEEDS)


def run_record(run) -> dict:
    """Everything of a checkpoint besides the tensors: what a resume (and sample.py) reads."""
    tc, plan = run.tc, recipes.step_plan(run.step, run.tc)
    return dict(step=run.step, rng=torch.get_rng_state(), stage=plan["stage"], model_config=dataclasses.asdict(run.mcfg),
                world_config=dataclasses.asdict(run.wcfg), train_config=dataclasses.asdict(tc),
                log_window=run.log_window, **(dict(codec=run.codec.state()) if run.codec is not None else {}),
                **(dict(lora_base=run.lora_base, lora_base_fingerprint=run.lora_fingerprint)
                                              if run.mcfg.lora_rank else {}),
                # for readers and tools: a resume recomputes these from `step` (step_plan)
                data_position=dict(joint_batches=plan["joint_index"] * tc.grad_accum,
                                   audio_only_batches=plan["audio_index"] * tc.grad_accum))


def save_run(run, name: str = "ckpt"):
    """Checkpoint the run atomically; every rank takes part. FSDP2: each rank writes its shards into
    out_dir/{name}_sharded (sharded.py: nothing is gathered). Otherwise rank 0 writes out_dir/{name}.pt."""
    if run.fsdp:
        folder = os.path.join(run.tc.out_dir, f"{name}_sharded")     # ckpt -> sharded.NAME
        sharded.save(run.net, run.ema, run.opt, run_record(run), folder, run.rank)
        return
    model_state = {k: v.detach().cpu() for k, v in run.net.state_dict().items()}
    if run.mcfg.lora_rank:  # the checkpoint holds what trains; the frozen base is named, not copied
        model_state = {k: v for k, v in model_state.items() if lora.trains(run.net, k)}
    if run.rank == 0:
        ema_state = {k: v.cpu() for k, v in run.ema.items()}
        save_atomic(dict(model=model_state, ema=ema_state, optimizer=run.opt.state_dict(), **run_record(run)),
                    os.path.join(run.tc.out_dir, f"{name}.pt"))
    if run.world > 1:
        dist.barrier()
