"""The toy benchmark's metrics (metrics.py): the world's own clips score near the top, corrupted clips
(identity swapped, audio shifted, lines given to the wrong speaker, a caption word spoken, noise)
clearly worse. Each corruption changes one thing and the metric that should see it does."""
import numpy as np
import pytest
import torch

import data
import metrics

WORLD = data.WorldConfig()
N = 3


def clip(scene, i, seed=5):
    return data.make_clip(data.sample_rng(seed, 3, 0, i), data.WorldConfig(scene=scene))


def mean_score(scene, corrupt=None):
    """Mean metrics over N clips of a scene, after an optional corruption (video, mel, case) -> same."""
    rows = []
    for i in range(N):
        c = clip(scene, i)
        video, mel, case = c["video"], c["audio"], c
        if corrupt is not None:
            video, mel, case = corrupt(c, i)
        rows.append(metrics.score_clip(video, mel, case, WORLD))
    return {k: float(np.nanmean([r[k] for r in rows])) for k in metrics.METRICS}


@pytest.fixture(scope="module")
def truth():
    return {scene: mean_score(scene) for scene in ("single", "dialogue")}


def swap_identity(c, i):
    other = clip(c["roles"] and "dialogue" if len(c["roles"]) > 1 else "single", i, seed=6)
    n = len(c["roles"])
    return c["video"], c["audio"], dict(c, identities=other["identities"][:n], ref_audio=other["ref_audio"][:n])


def shift_audio(c, i):
    return c["video"], torch.roll(c["audio"], 3 * WORLD.mel_frames // WORLD.frames, 0), c   # 3 video frames late


def wrong_speaker(c, i):
    return c["video"], c["audio"], dict(c, line_speaker=1 - c["line_speaker"])


def speak_caption_word(c, i):
    who = int(c["line_speaker"][0])
    word = c["identities"][who].describe().split()[1]                 # e.g. "long" from "black long hair"
    end = max(e for _, _, e in c["line_times"])
    seg, _ = data.schedule_line(word, 0, min(end + 0.05, WORLD.clip_seconds - 0.45), 1.0)
    extra, _ = data.synthesize(seg, [c["identities"][who]], WORLD.samples, WORLD, np.random.default_rng(i))
    return c["video"], data.wav_to_mel(c["wav"] + extra, WORLD), c


def noise(c, i):
    g = torch.Generator().manual_seed(i)
    return (torch.rand(c["video"].shape, generator=g) * 2 - 1), torch.randn(c["audio"].shape, generator=g), c


def test_ground_truth_scores_near_the_top(truth):
    single = truth["single"]
    assert single["face_sim"] > 0.88 and single["face_cons"] > 0.98
    assert single["t_sim"] > 0.6 and single["sync_c"] > 0.3 and single["sync_d"] < 2
    assert single["per"] < 0.35 and single["vocalization"] < 0.1 and single["confusion"] == 0
    assert single["sharpness"] > 0.6 and single["flicker"] > 0.98


def test_a_swapped_identity_loses_face_and_voice_similarity(truth):
    for scene in ("single", "dialogue"):
        swapped = mean_score(scene, swap_identity)
        assert swapped["face_sim"] < truth[scene]["face_sim"] - 0.1
        assert swapped["t_sim"] < truth[scene]["t_sim"] - 0.15


def test_shifted_audio_breaks_sync(truth):
    for scene in ("single", "dialogue"):
        shifted = mean_score(scene, shift_audio)
        assert shifted["sync_c"] < truth[scene]["sync_c"] - 0.2
        assert shifted["sync_d"] > truth[scene]["sync_d"] + 1


def test_lines_given_to_the_wrong_speaker_raise_confusion(truth):
    wrong = mean_score("dialogue", wrong_speaker)
    assert wrong["confusion"] > truth["dialogue"]["confusion"] + 0.2
    assert wrong["sync_c"] < truth["dialogue"]["sync_c"] - 0.3


def test_a_spoken_caption_word_is_heard_as_vocalization(truth):
    spoken = mean_score("single", speak_caption_word)
    assert spoken["vocalization"] > truth["single"]["vocalization"] + 0.15
    assert spoken["per"] > truth["single"]["per"] + 0.1


def test_noise_scores_low_on_every_quality_axis(truth):
    bad = mean_score("single", noise)
    assert bad["face_sim"] < 0.7 and bad["face_cons"] < 0.85 and bad["sharpness"] < 0.3 and bad["flicker"] < 0.8
    assert bad["per"] > 0.8


def test_reference_sharpness_is_the_worlds_own():
    grads = []
    for i in range(6):
        f = (clip("mixed", i)["video"] + 1) / 2
        grads.append(((f[..., 1:, :] - f[..., :-1, :]).abs().mean() + (f[..., 1:] - f[..., :-1]).abs().mean()).item())
    assert abs(np.mean(grads) / metrics.REFERENCE_SHARPNESS - 1) < 0.25


def test_edit_operations_count_insertions():
    assert metrics.edit_ops(list("abc"), list("abc")) == (0, 0)
    assert metrics.edit_ops(list("abxc"), list("abc")) == (1, 1)
    assert metrics.edit_ops(list("ac"), list("abc")) == (1, 0)


def test_mean_ci_is_a_95_percent_normal_interval():
    mean, half = metrics.mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert mean == 2.0 and half == pytest.approx(1.96 * 1.0 / np.sqrt(3))
