"""The toy benchmark's metrics (metrics.py): the world's own clips score near the top, corrupted clips
(identity swapped, audio shifted, lines given to the wrong speaker, a caption word spoken, noise)
clearly worse. Each corruption changes one thing and the metric that should see it does."""
import numpy as np
import pytest
import data
import metrics

WORLD = data.WorldConfig()
N = 3


def clip(scene, i, seed=5):
    return data.make_clip(data.sample_rng(seed, 3, 0, i), data.WorldConfig(scene=scene))


def mean_score(scene, corrupt=None):
    """Mean metrics over N clips of a scene, after an optional corruption from metrics.CORRUPTIONS."""
    rows = []
    for i in range(N):
        c, other = clip(scene, i), clip(scene, i, seed=6)
        out = (c["video"], c["audio"], c) if corrupt is None else corrupt(c, other, WORLD)
        rows.append(metrics.score_clip(*out, WORLD))
    return {k: float(np.nanmean([r[k] for r in rows])) for k in metrics.METRICS}


@pytest.fixture(scope="module")
def truth():
    return {scene: mean_score(scene) for scene in ("single", "dialogue")}


def test_ground_truth_scores_near_the_top(truth):
    single = truth["single"]
    assert single["face_sim"] > 0.88 and single["face_cons"] > 0.98
    assert single["t_sim"] > 0.6 and single["sync_c"] > 0.3 and single["sync_d"] < 2
    assert single["per"] < 0.35 and single["vocalization"] < 0.1 and single["confusion"] == 0
    assert single["sharpness"] > 0.6 and single["flicker"] > 0.98


def test_a_swapped_identity_loses_face_and_voice_similarity(truth):
    for scene in ("single", "dialogue"):
        swapped = mean_score(scene, metrics.swap_identity)
        assert swapped["face_sim"] < truth[scene]["face_sim"] - 0.1
        assert swapped["t_sim"] < 0.75 * truth[scene]["t_sim"]          # dialogue T-Sim is noisy: relative


def test_shifted_audio_breaks_sync(truth):
    for scene in ("single", "dialogue"):
        shifted = mean_score(scene, metrics.shift_audio)
        assert shifted["sync_c"] < truth[scene]["sync_c"] - 0.2
        assert shifted["sync_d"] > truth[scene]["sync_d"] + 0.75       # a lag on 16 frames: coarse


def test_lines_given_to_the_wrong_speaker_raise_confusion(truth):
    wrong = mean_score("dialogue", metrics.wrong_speaker)
    assert wrong["confusion"] > truth["dialogue"]["confusion"] + 0.2
    assert wrong["sync_c"] < truth["dialogue"]["sync_c"] - 0.3


def test_a_spoken_caption_word_is_heard_as_vocalization(truth):
    spoken = mean_score("single", metrics.speak_caption_word)
    assert spoken["vocalization"] > truth["single"]["vocalization"] + 0.15
    assert spoken["per"] > truth["single"]["per"] + 0.1


def test_noise_scores_low_on_every_quality_axis(truth):
    bad = mean_score("single", metrics.noise)
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


def test_mean_ci_is_a_95_percent_interval_normal_or_students_t():
    mean, half = metrics.mean_ci([1.0, 2.0, 3.0, float("nan")])          # NaN (an unscorable case) is left out
    assert mean == 2.0 and half == pytest.approx(1.96 * 1.0 / np.sqrt(3))
    _, half = metrics.mean_ci([1.0, 2.0, 3.0], student=True)             # 3 seeds: Student's t, 4.30 standard errors
    assert half == pytest.approx(4.303 * 1.0 / np.sqrt(3), rel=1e-3)


def test_the_voice_judge_tells_a_voice_from_another_on_new_words():
    """T-Sim's judge, on voices it was not fitted on: the same voice saying other words scores high, another
    voice low (the WavLM-similarity analog must separate speakers, not words)."""
    import speech
    rng = np.random.default_rng(99)
    voices = [data.Identity.sample(rng) for _ in range(12)]

    def say(ident):
        text = speech.make_words(rng, "A", 0.9)
        seg, _ = speech.schedule_line(text, 0, 0.1, 1.0)
        wav, _ = speech.synthesize(seg, [ident], WORLD.sample_rate, WORLD, rng)
        return metrics.voice_vector(speech.wav_to_mel(wav, WORLD), WORLD)
    first, second = [say(v) for v in voices], [say(v) for v in voices]
    same = [metrics.voice_similarity(a, b) for a, b in zip(first, second)]
    other = [metrics.voice_similarity(a, b) for i, a in enumerate(first) for j, b in enumerate(second) if i != j]
    assert np.mean(same) > 0.6 and np.mean(other) < 0.25 and np.mean(same) - np.mean(other) > 0.4


def test_text_following_reads_the_caption_back_and_drops_under_another_caption(truth):
    """The judge reads the room's colour and pattern and each subject's hair and shirt colour off the frames:
    the world's own clip matches its caption almost always; scored against another clip's caption, or as
    noise, it is near chance."""
    other = mean_score("single", metrics.other_caption)
    noise = mean_score("single", metrics.noise)
    assert truth["single"]["text_follow"] >= 0.75 and truth["dialogue"]["text_follow"] >= 0.75
    assert other["text_follow"] < truth["single"]["text_follow"] - 0.4
    assert noise["text_follow"] < truth["single"]["text_follow"] - 0.4


def test_every_colour_word_of_a_caption_is_the_colour_drawn():
    """The palette (data.COLOUR_NAMES): hair, shirt and room colours are named by the entry they were drawn
    from, so no caption calls a lime shirt grey."""
    for i in range(40):
        c = clip("mixed", i)
        for ident in c["identities"]:
            assert f"{data.colour_name(ident.hair)} " in c["caption"] and f"{data.colour_name(ident.shirt)} shirt" in c["caption"]
            for rgb in (ident.hair, ident.shirt):  # the drawn colour sits within the jitter of its named entry
                assert np.abs(np.asarray(data.COLOUR_NAMES[data.colour_name(rgb)]) - rgb).max() <= data.JITTER + 1e-6
        assert f"a {data.room_colour_name(c['room']['colour'])} room" in c["caption"]
