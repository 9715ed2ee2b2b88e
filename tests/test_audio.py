"""Tests for minidit.data.audio: exact spectrogram bins, the frames layout and its inverse, Griffin-Lim, WAV bytes,
the caption grammar, and the metrics read from frames (exact on clean sounds, worse on wrong ones, robust to noise)."""
import io
import math
import wave

import numpy as np
import pytest
import torch

from minidit.data.audio import (
    AMPLITUDE,
    BINS,
    COLUMNS_PER_FRAME,
    DB_RANGE,
    HOP,
    KINDS,
    MARGIN,
    N_FFT,
    PITCHES,
    REFERENCE,
    SAMPLE_RATE,
    VOCABULARY,
    AudioDataset,
    SoundSpec,
    caption,
    from_frames,
    griffin_lim,
    magnitude_to_frames,
    num_samples,
    onsets,
    parse_sound_caption,
    pitch_track,
    read_sounds,
    sample_sounds,
    semitones,
    sound_report,
    spectral_convergence,
    spectrogram,
    synthesise,
    to_frames,
    wav_bytes,
    write_wav,
)
from minidit.text.tokenizer import Tokenizer, normalize, split_pieces
from minidit.validation import InputError

BIN_HZ = SAMPLE_RATE / N_FFT


def every_spec() -> list[SoundSpec]:
    """The 24 sounds of the grammar."""
    pitches = list(PITCHES)
    specs = [SoundSpec("steady", p) for p in pitches]
    specs += [SoundSpec("rising" if a < b else "falling", pitches[a], pitches[b])
              for a in range(3) for b in range(3) if a != b]
    specs += [SoundSpec("chord", p, count=c) for p in pitches for c in (2, 3)]
    specs += [SoundSpec("beeps", p, count=c) for p in pitches for c in (1, 2, 3)]
    return specs


def sine(hertz: float, frames: int = 4, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(num_samples(frames), dtype=torch.float64) / SAMPLE_RATE
    return (amplitude * torch.sin(2 * math.pi * hertz * t)).float()[None]  # (1, S)


def test_stft_of_a_bin_centred_tone_peaks_at_its_bin_with_the_closed_form_height():
    k = 10
    magnitude = spectrogram(sine(k * BIN_HZ))[0, :, 2:-2]  # (F, columns) away from the padded ends
    assert (magnitude.argmax(0) == k).all()
    # a periodic Hann window sums to N / 2, so a sine of amplitude A gives |X_k| = A N / 4 = A REFERENCE
    torch.testing.assert_close(magnitude[k], torch.full_like(magnitude[k], 0.5 * REFERENCE), rtol=1e-4, atol=0)
    frames = to_frames(sine(k * BIN_HZ))  # lowest bin at the bottom: bin k is row H - 1 - k
    assert (frames[0, :, :, 1:-1, 0].argmax(0) == BINS - 1 - k).all()


def test_pitch_track_reads_off_bin_tones_within_two_hundredths_of_a_bin():
    hertz = torch.tensor([150.0, 220.0, 330.0, 517.3, 880.0])
    waveforms = torch.cat([sine(float(f)) for f in hertz])
    track = pitch_track(to_frames(waveforms))  # (5, 64), every column sounding
    assert not track.isnan().any()
    assert ((track[:, 2:-2] - hertz[:, None]).abs() / BIN_HZ).max() < 0.02


def test_synthesised_sounds_are_silent_in_the_margins_bounded_and_click_free():
    specs = every_spec()
    waveforms = synthesise(specs, frames=4)
    assert waveforms.shape == (24, num_samples(4)) == (24, 63 * HOP) and waveforms.dtype == torch.float32
    assert waveforms.abs().max() <= AMPLITUDE + 1e-6
    margin = int(MARGIN * SAMPLE_RATE)
    assert (waveforms[:, :margin] == 0).all() and (waveforms[:, -margin:] == 0).all()
    # no clicks: no step larger than the steepest slope of the highest tone, 2 pi f A / rate
    steepest = 2 * math.pi * 2 * PITCHES["high"] * AMPLITUDE / SAMPLE_RATE
    assert waveforms.diff(dim=1).abs().max() <= steepest


def test_a_chirp_is_exponential_a_straight_line_in_semitones():
    frames = to_frames(synthesise([SoundSpec("rising", "low", "high")]))
    track = semitones(pitch_track(frames)[0])
    sounding = ~track.isnan()
    columns = torch.arange(len(track), dtype=torch.float32)[sounding][3:-3]  # away from the ramps
    values = track[sounding][3:-3]
    line = np.polyfit(columns.numpy(), values.numpy(), 1)
    residual = values.numpy() - np.polyval(line, columns.numpy())
    assert np.abs(residual).max() < 0.2  # a chirp linear in Hz from 220 to 440 Hz bends by 1 semitone
    assert 0.2 < line[0] < 0.25  # 12 semitones over the 0.928 s of sound, 58 columns


def test_frames_layout_and_inverse_round_trip_exactly():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3, BINS, COLUMNS_PER_FRAME, 5, 1, generator=generator) * 2 - 1
    torch.testing.assert_close(magnitude_to_frames(from_frames(x)), x, atol=2e-6, rtol=0)
    waveforms = synthesise(sample_sounds(3, 1), frames=5)
    frames = to_frames(waveforms)
    assert frames.shape == (3, BINS, COLUMNS_PER_FRAME, 5, 1) and frames.min() >= -1 and frames.max() <= 1
    magnitude = spectrogram(waveforms)[:, :BINS]
    floor = REFERENCE * 10 ** (-DB_RANGE / 20)
    torch.testing.assert_close(from_frames(frames), magnitude.clamp(floor, REFERENCE), rtol=1e-4, atol=0)
    scaled = 20 * torch.log10(magnitude.clamp_min(floor) / REFERENCE) * (2 / DB_RANGE) + 1  # (N, H, T W)
    for t, w, k in [(0, 0, 0), (2, 7, 11), (4, 15, 31)]:  # column t W + w, bin k -> x[:, H - 1 - k, w, t]
        torch.testing.assert_close(frames[:, BINS - 1 - k, w, t, 0], scaled[:, k, t * COLUMNS_PER_FRAME + w])


def test_longer_sounds_are_more_frames_and_bad_lengths_are_refused():
    for frames in (1, 2, 7):
        assert to_frames(synthesise(sample_sounds(2, 0), frames)).shape[3] == frames
    with pytest.raises(ValueError, match="num_samples"):
        to_frames(torch.zeros(1, num_samples(4) + HOP))
    with pytest.raises(ValueError, match="frames must be >= 1"):
        num_samples(0)
    with pytest.raises(ValueError, match="frames must have shape"):
        pitch_track(torch.zeros(1, BINS, COLUMNS_PER_FRAME, 4))


def test_griffin_lim_matches_the_magnitude_and_momentum_converges_faster():
    magnitude = from_frames(to_frames(synthesise(every_spec())))  # (24, H, 64)
    fast = spectral_convergence(griffin_lim(magnitude, n_iter=32), magnitude)
    plain = spectral_convergence(griffin_lim(magnitude, n_iter=32, momentum=0.0), magnitude)
    early = spectral_convergence(griffin_lim(magnitude, n_iter=8), magnitude)
    assert fast.max() < 0.12 and plain.max() < 0.2  # measured 0.089 and 0.149 on 64 random sounds
    assert fast.mean() < plain.mean() and fast.mean() < early.mean()
    again = griffin_lim(magnitude[:2], n_iter=4)
    assert torch.equal(again, griffin_lim(magnitude[:2], n_iter=4))  # fixed start phase
    assert not torch.equal(again, griffin_lim(magnitude[:2], n_iter=4, seed=1))
    assert again.shape == (2, 63 * HOP)
    with pytest.raises(ValueError, match="n_iter"):
        griffin_lim(magnitude, n_iter=0)


def test_wav_bytes_parse_back_with_the_wave_module(tmp_path):
    waveform = torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -2.0, 0.25])
    with wave.open(io.BytesIO(wav_bytes(waveform, 8000))) as file:
        assert (file.getnchannels(), file.getsampwidth(), file.getframerate(), file.getnframes()) == (1, 2, 8000, 8)
        samples = np.frombuffer(file.readframes(8), dtype="<i2")
    assert samples.tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767, 8192]
    sound = synthesise([SoundSpec("steady", "low")])[0]
    path = write_wav(tmp_path / "tone.wav", sound)
    with wave.open(str(path)) as file:
        assert (file.getframerate(), file.getnframes()) == (SAMPLE_RATE, num_samples(4))
    with pytest.raises(InputError, match="overwrite=True"):
        write_wav(path, sound)
    write_wav(path, sound[:100], overwrite=True)
    with wave.open(str(path)) as file:
        assert file.getnframes() == 100
    with pytest.raises(ValueError, match="mono"):
        wav_bytes(sound[None])


def test_captions_parse_back_exactly_and_use_the_vocabulary():
    specs = sample_sounds(1000, 3)
    assert set(specs) == set(every_spec())  # every sound of the grammar is drawn
    assert {s.kind for s in specs} == set(KINDS)
    for spec in specs:
        text = caption(spec)
        assert parse_sound_caption(text) == spec
        assert parse_sound_caption(f"  {text.upper()} ") == spec
    words = {word for spec in every_spec() for word in split_pieces(caption(spec))}
    assert words == set(VOCABULARY) and len(VOCABULARY) == len(set(VOCABULARY))
    assert caption(SoundSpec("beeps", "high", count=1)) == "one short high beep"
    assert caption(SoundSpec("chord", "low", count=3)) == "a low chord of three tones"
    assert sample_sounds(50, (1, 2)) == sample_sounds(50, [1, 2]) != sample_sounds(50, (2, 1))


@pytest.mark.parametrize("text, problem", [
    ("a steady loud tone", "unknown pitch"),
    ("a rising tone from high to low", "end_pitch above"),
    ("one short low beeps", "not a sound caption"),
    ("a low chord of one tones", r"must be in \[2, 3\]"),
    ("a red circle", "not a sound caption"),
])
def test_captions_outside_the_grammar_are_refused(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_sound_caption(text)


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="end_pitch is for rising"):
        SoundSpec("steady", "low", "high")
    with pytest.raises(ValueError, match=r"count of a 'chord' sound must be in \[2, 3\]"):
        SoundSpec("chord", "low")
    with pytest.raises(ValueError, match="unknown kind"):
        SoundSpec("whistle", "low")


@pytest.mark.parametrize("frames", [1, 4, 8])
def test_metrics_are_exact_on_clean_frames(frames):
    specs = every_spec()
    report = sound_report(to_frames(synthesise(specs, frames)), [caption(s) for s in specs])
    for key in ("kind_correct", "onset_count_correct", "tone_count_correct", "sound_accuracy"):
        assert report[key] == 1.0, key
    assert report["pitch_error"] < 0.25  # semitones; measured 0.04 at T = 4
    for clip, spec in zip(report["clips"], specs):
        assert clip["expected"] == spec and clip["correct"]
        assert clip["read"].tones == (spec.count if spec.kind == "chord" else 1)


def test_onsets_are_where_the_beeps_begin():
    frames = to_frames(synthesise([SoundSpec("beeps", "middle", count=3), SoundSpec("steady", "low")]))
    columns = onsets(frames)
    slot = (num_samples(4) / SAMPLE_RATE - 2 * MARGIN) / 3
    starts = [(MARGIN + (i + 0.5) * slot - 0.2 * slot) * SAMPLE_RATE / HOP for i in range(3)]  # BEEP_FRACTION 0.4
    assert len(columns[0]) == 3 and all(abs(c - s) <= 1.5 for c, s in zip(columns[0], starts))
    assert columns[1] == [pytest.approx(MARGIN * SAMPLE_RATE / HOP, abs=1.5)]
    track = pitch_track(frames)
    assert track[:, 0].isnan().all() and track[1, 32] == pytest.approx(PITCHES["low"], abs=0.5)


def test_silence_reads_as_silence():
    frames = to_frames(torch.zeros(1, num_samples(2)))
    assert frames.eq(-1).all() and onsets(frames) == [[]] and pitch_track(frames).isnan().all()
    read = read_sounds(frames)[0]
    assert read.kind == "silence" and math.isnan(read.pitch)
    report = sound_report(frames, ["a steady low tone"])
    assert report["sound_accuracy"] == 0.0 and math.isnan(report["pitch_error"])


def test_metrics_drop_on_shuffled_captions_and_time_reversed_frames():
    specs = sample_sounds(96, 11)
    captions = [caption(s) for s in specs]
    frames = to_frames(synthesise(specs))
    shuffled = [captions[i] for i in np.random.default_rng(0).permutation(len(captions))]
    wrong = sound_report(frames, shuffled)
    assert wrong["sound_accuracy"] < 0.3 and wrong["pitch_error"] > 2  # measured 0.05 and 4.7 on 64
    reversed_frames = frames.flip(2).flip(3)  # column t W + w -> the mirrored column
    report = sound_report(reversed_frames, captions)
    opposite = {"rising": "falling", "falling": "rising"}
    for clip, spec in zip(report["clips"], specs):
        assert clip["read"].kind == opposite.get(spec.kind, spec.kind)  # a rising tone is read as falling
    chirps = sum(s.kind in opposite for s in specs) / len(specs)
    assert report["kind_correct"] == pytest.approx(1 - chirps) and chirps > 0.25


def test_metrics_are_robust_to_noise_on_the_frames():
    specs = sample_sounds(128, 4)
    frames = to_frames(synthesise(specs))
    noisy = frames + 0.2 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))
    report = sound_report(noisy, [caption(s) for s in specs])
    assert report["sound_accuracy"] >= 0.95 and report["pitch_error"] < 0.5  # measured 1.0 and 0.25 on 256


def test_sound_report_refuses_mismatched_captions():
    frames = to_frames(synthesise(sample_sounds(2, 0)))
    with pytest.raises(ValueError, match="one caption per clip"):
        sound_report(frames, ["a steady low tone"])
    with pytest.raises(ValueError, match="not a sound caption"):
        sound_report(frames, ["a steady low tone", "a blue square"])


def test_dataset_is_deterministic_in_seed_and_step():
    data = AudioDataset(frames=2, seed=3)
    x, conditioning = data.get_batch(5, 6)
    assert x.shape == (6, BINS, COLUMNS_PER_FRAME, 2, 1) and x.dtype == torch.float32 and conditioning == {}
    assert torch.equal(x, AudioDataset(frames=2, seed=3).get_batch(5, 6)[0])
    assert not torch.equal(x, data.get_batch(6, 6)[0])
    assert not torch.equal(x, AudioDataset(frames=2, seed=4).get_batch(5, 6)[0])
    assert data.captions(5, 6) == [caption(s) for s in sample_sounds(6, (3, 5))]
    assert sound_report(x, data.captions(5, 6))["sound_accuracy"] == 1.0
    assert data.tokenizer is None
    with pytest.raises(ValueError, match="frames must be >= 1"):
        AudioDataset(frames=0)


def test_dataset_tokenizer_path():
    tokenizer = Tokenizer(VOCABULARY)
    data = AudioDataset(seed=1, tokenizer=tokenizer, text_length=16)
    x, conditioning = data.get_batch(0, 8)
    ids, mask = conditioning["text_ids"], conditioning["text_mask"]
    assert ids.shape == mask.shape == (8, 16) and ids.dtype == torch.long and mask.dtype == torch.bool
    captions = data.captions(0, 8)
    assert mask.sum(1).tolist() == [len(split_pieces(c)) + 2 for c in captions]  # [BOS] caption [EOS]
    assert [tokenizer.decode(row) for row in ids] == [normalize(c) for c in captions]
    assert all(not tokenizer.unknown_words(caption(s)) for s in every_spec())
    assert data.tokenizer is tokenizer and x.shape[0] == 8
