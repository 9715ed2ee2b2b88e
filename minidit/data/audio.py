"""Audio as frames: captioned tones, chirps, chords and beeps as log-magnitude spectrogram frames ``[H, W, T, 1]``.

A sound is synthesised exactly from a small grammar ("a rising tone from low to high", "two short high beeps"), its
short-time Fourier transform becomes a ``32 x (16 T)`` dB image cut into ``T`` frames of 16 columns, so a longer sound
is more frames; pitch tracks and onsets read back from the frames check a generated spectrogram against its caption,
and Griffin-Lim turns frames back into a waveform to listen to. Lumina-T2X (arXiv 2405.05945, Sec. 2.2) generates
speech as spectrogram frames ``[H, W, T, C]`` next to images, video and multi-view images with one Flag-DiT; this is
that modality at toy scale. Used by notebooks/09_any_modality.ipynb.

Signal chain (every constant below is a module constant):

- Sounds at ``SAMPLE_RATE = 8000`` Hz, peak amplitude ``AMPLITUDE``, ``MARGIN`` s of silence at both ends, raised-cosine
  (``sin^2``) ramps of ``RAMP`` s on every note, so there are no clicks. Pitches low / middle / high are 220 / 330 /
  440 Hz. A rising or falling tone is an *exponential* chirp between two of them (constant semitones per second, a
  straight line in a pitch track in semitones). A chord is its root with a fifth (x 1.5) and, for three tones, an octave
  (x 2). Beeps sit at the centres of equal slots and last ``BEEP_FRACTION`` of a slot.
- Spectrogram: ``torch.stft`` with a periodic Hann window, ``N_FFT = 256`` (31.25 Hz per bin), ``HOP = 128``,
  ``center=True``; the lowest ``BINS = 32`` bins (0 to 969 Hz) hold every sound. A *linear* frequency axis rather than
  mel: with 32 bins a mel axis would blur the high pitches, and both the peak-bin pitch reading (bin ``k`` is
  ``k SAMPLE_RATE / N_FFT`` Hz) and Griffin-Lim need uniform bins. Magnitudes become dB relative to
  ``REFERENCE`` (the peak of a unit-amplitude sine), clamped to ``[-DB_RANGE, 0]`` and mapped linearly to ``[-1, 1]``.
- Layout ``(N, H, W, T, 1)``: ``H = 32`` is frequency with the **lowest bin at the bottom** (row ``H - 1 - k`` holds bin
  ``k``, so a frame shown as an image looks like a textbook spectrogram), ``W = 16`` is time within a frame, ``T``
  counts consecutive chunks: column ``t W + w`` of the spectrogram is ``x[:, :, w, t]``. ``T`` frames take
  ``num_samples(T) = (16 T - 1) HOP`` samples (``1.008`` s for ``T = 4``).
- Waveform back: Griffin-Lim (Griffin & Lim 1984, IEEE TASSP 32(2)) with the momentum of the fast Griffin-Lim
  algorithm (Perraudin et al. 2013, WASPAA), from a fixed-seed random phase; ``wav_bytes`` / ``write_wav`` write 16-bit
  PCM with the standard ``wave`` module.

Reading the frames back (``read_sounds``, ``sound_report``) uses the frames alone: a column is *sounding* by hysteresis
on its energy (on above ``ON_DB``, off below ``OFF_DB``); an onset is a column where it turns on; the pitch of a column
is its peak bin refined by a parabola through the dB values of the peak and its neighbours; simultaneous tones are the
local maxima within ``PEAK_DB`` of the column's peak. The kind follows: two or more tones -> chord; two or more onsets,
or sound in less than ``BEEP_MAX_FRACTION`` of the columns -> beeps; a fitted pitch change beyond ``CHIRP_SEMITONES`` ->
rising or falling; otherwise steady. On clean frames every sound is read right for any ``T``; with Gaussian noise of
std 0.2 added to the frames, 100% at ``T = 4`` and ``T = 8``, about 95% at ``T = 2`` and 75% at ``T = 1``.

Example:
    >>> specs = sample_sounds(4, seed=0)
    >>> frames = to_frames(synthesise(specs, frames=4))        # (4, 32, 16, 4, 1) in [-1, 1]
    >>> sound_report(frames, [caption(s) for s in specs])["sound_accuracy"]
    1.0
    >>> waveform = griffin_lim(from_frames(frames))            # (4, 8064), to listen with wav_bytes
"""
from __future__ import annotations

import io
import math
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from minidit.text.tokenizer import Tokenizer, split_pieces
from minidit.validation import InputError, check_choice

SAMPLE_RATE = 8000  # Hz
N_FFT, HOP = 256, 128  # window and hop in samples: 31.25 Hz per bin, 62.5 columns per second
BINS, COLUMNS_PER_FRAME = 32, 16  # H and W of a frame
REFERENCE = N_FFT / 4  # |stft| at the peak of a unit-amplitude sine on a bin centre: sum(hann) / 2
DB_RANGE = 80.0  # frames span [-DB_RANGE, 0] dB
AMPLITUDE = 0.5  # peak amplitude of a sound; a chord's tones share it
MARGIN, RAMP = 0.04, 0.01  # seconds of silence at both ends; seconds of each raised-cosine ramp
BEEP_FRACTION = 0.4  # a beep lasts this fraction of its slot

KINDS = ("steady", "rising", "falling", "chord", "beeps")
PITCHES: dict[str, float] = {"low": 220.0, "middle": 330.0, "high": 440.0}
CHORD_RATIOS = (1.0, 1.5, 2.0)  # root, fifth, octave
NUMBERS = ("one", "two", "three")
MAX_COUNT = {"chord": 3, "beeps": 3}
MIN_COUNT = {"chord": 2, "beeps": 1}

ON_DB, OFF_DB = -35.0, -45.0  # column energy (dB re REFERENCE) that switches a column on / off
PEAK_DB = 15.0  # a simultaneous tone is a local maximum within this many dB of the column's peak
CHIRP_SEMITONES = 2.5  # a fitted pitch change beyond this is a rising or falling tone (the smallest chirp is 5)
BEEP_MAX_FRACTION = 0.65  # one sound in fewer columns than this fraction is a beep
PITCH_TOLERANCE = 2.0  # semitones; the pitch levels are 7 and 5 semitones apart

VOCABULARY: tuple[str, ...] = (
    "a", "steady", "tone", "tones", "rising", "falling", "from", "to", "chord", "of", "short", "beep", "beeps",
    *PITCHES, *NUMBERS,
)
_PITCH_NAMES = tuple(PITCHES)


@dataclass(frozen=True)
class SoundSpec:
    """One sound of the grammar.

    Attributes:
        kind: ``"steady"``, ``"rising"``, ``"falling"``, ``"chord"`` or ``"beeps"``.
        pitch: ``"low"``, ``"middle"`` or ``"high"``: the tone, a chirp's start, a chord's root, the beeps' pitch.
        end_pitch: a chirp's last pitch (above ``pitch`` when rising, below when falling); ``None`` for other kinds.
        count: a chord's tones (2 or 3), the number of beeps (1 to 3); 1 for the other kinds.
    """

    kind: str
    pitch: str
    end_pitch: str | None = None
    count: int = 1

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, KINDS)
        check_choice("pitch", self.pitch, PITCHES)
        if self.kind in ("rising", "falling"):
            check_choice("end_pitch", str(self.end_pitch), PITCHES)
            step = _PITCH_NAMES.index(self.end_pitch) - _PITCH_NAMES.index(self.pitch)
            if (step > 0) != (self.kind == "rising") or step == 0:
                side = "above" if self.kind == "rising" else "below"
                raise ValueError(f"a {self.kind} tone needs an end_pitch {side} its pitch; "
                                 f"got {self.pitch!r} to {self.end_pitch!r}")
        elif self.end_pitch is not None:
            raise ValueError(f"end_pitch is for rising and falling tones only; pass end_pitch=None for {self.kind!r}")
        low, high = MIN_COUNT.get(self.kind, 1), MAX_COUNT.get(self.kind, 1)
        if not low <= self.count <= high:
            raise ValueError(f"count of a {self.kind!r} sound must be in [{low}, {high}]; got {self.count}")


def caption(spec: SoundSpec) -> str:
    """The caption of ``spec``, e.g. ``"a steady low tone"``, ``"a rising tone from low to high"``,
    ``"a middle chord of three tones"``, ``"two short high beeps"``."""
    if spec.kind == "steady":
        return f"a steady {spec.pitch} tone"
    if spec.kind in ("rising", "falling"):
        return f"a {spec.kind} tone from {spec.pitch} to {spec.end_pitch}"
    if spec.kind == "chord":
        return f"a {spec.pitch} chord of {NUMBERS[spec.count - 1]} tones"
    return f"{NUMBERS[spec.count - 1]} short {spec.pitch} beep{'s' if spec.count > 1 else ''}"


def parse_sound_caption(text: str) -> SoundSpec:
    """The ``SoundSpec`` of a caption of the grammar (``caption``); case and spacing are free.

    Raises:
        ValueError: for text outside the grammar, naming the four caption forms.
    """
    words = split_pieces(text)
    try:
        match words:
            case ["a", "steady", pitch, "tone"]:
                return SoundSpec("steady", pitch)
            case ["a", ("rising" | "falling") as kind, "tone", "from", pitch, "to", end_pitch]:
                return SoundSpec(kind, pitch, end_pitch)
            case ["a", pitch, "chord", "of", number, "tones"] if number in NUMBERS:
                return SoundSpec("chord", pitch, count=NUMBERS.index(number) + 1)
            case [number, "short", pitch, "beep" | "beeps" as noun] if number in NUMBERS and (
                    (noun == "beep") == (number == "one")):
                return SoundSpec("beeps", pitch, count=NUMBERS.index(number) + 1)
    except ValueError as error:
        raise ValueError(f"caption {text!r}: {error}") from None
    raise ValueError(f"caption {text!r} is not a sound caption; write 'a steady low tone', 'a rising tone from low to "
                     "high', 'a middle chord of two tones' or 'two short high beeps' (pitches low, middle, high)")


def sample_sounds(n: int, seed: int | Sequence[int]) -> list[SoundSpec]:
    """``n`` sounds with a uniform kind, then uniform pitches and counts; the same seed gives the same sounds.

    Args:
        n: number of sounds.
        seed: an integer, or a sequence of integers such as ``(seed, step)`` (numpy ``default_rng`` seeding).
    """
    rng = np.random.default_rng(seed)
    specs = []
    for _ in range(n):
        kind = KINDS[rng.integers(len(KINDS))]
        if kind in ("rising", "falling"):
            pair = sorted(rng.choice(len(PITCHES), size=2, replace=False), reverse=kind == "falling")
            specs.append(SoundSpec(kind, _PITCH_NAMES[pair[0]], _PITCH_NAMES[pair[1]]))
            continue
        pitch = _PITCH_NAMES[rng.integers(len(PITCHES))]
        count = int(rng.integers(MIN_COUNT.get(kind, 1), MAX_COUNT.get(kind, 1) + 1))
        specs.append(SoundSpec(kind, pitch, count=count))
    return specs


def num_samples(frames: int) -> int:
    """Samples of a waveform whose spectrogram has exactly ``frames`` frames: ``(frames W - 1) HOP``."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1; got {frames}")
    return (frames * COLUMNS_PER_FRAME - 1) * HOP


def _envelope(t: Tensor, start: float, end: float) -> Tensor:
    """1 on ``[start, end]`` seconds with ``sin^2`` ramps of ``RAMP`` s inside both ends, 0 outside."""
    rise = ((t - start) / RAMP).clamp(0, 1)
    fall = ((end - t) / RAMP).clamp(0, 1)
    return torch.sin(math.pi / 2 * rise) ** 2 * torch.sin(math.pi / 2 * fall) ** 2


def _waveform(spec: SoundSpec, samples: int) -> Tensor:
    """The ``(samples,)`` float64 waveform of one sound."""
    t = torch.arange(samples, dtype=torch.float64) / SAMPLE_RATE
    start, end = MARGIN, samples / SAMPLE_RATE - MARGIN
    f0 = PITCHES[spec.pitch]
    if spec.kind in ("rising", "falling"):  # f = f0 exp(k tau), phase 2 pi f0 (exp(k tau) - 1) / k, tau = t - start
        rate = math.log(PITCHES[spec.end_pitch] / f0) / (end - start)  # k = ln(f1 / f0) / duration
        phase = 2 * math.pi * f0 * torch.expm1(rate * (t - start).clamp(0, end - start)) / rate
        return AMPLITUDE * torch.sin(phase) * _envelope(t, start, end)
    if spec.kind == "beeps":
        slot = (end - start) / spec.count
        centres = [start + (i + 0.5) * slot for i in range(spec.count)]
        half = BEEP_FRACTION * slot / 2
        envelope = sum(_envelope(t, c - half, c + half) for c in centres)
    else:
        envelope = _envelope(t, start, end)
    ratios = CHORD_RATIOS[:spec.count] if spec.kind == "chord" else (1.0,)
    tones = sum(torch.sin(2 * math.pi * f0 * ratio * t) for ratio in ratios) / len(ratios)
    return AMPLITUDE * tones * envelope


def synthesise(specs: Sequence[SoundSpec], frames: int = 4) -> Tensor:
    """Waveforms of ``specs``, each lasting ``frames`` spectrogram frames.

    Args:
        specs: ``N`` sounds.
        frames: ``T``; the waveforms have ``num_samples(T)`` samples at ``SAMPLE_RATE``.
    Returns:
        ``(N, S)`` float32 in ``[-AMPLITUDE, AMPLITUDE]``.
    """
    samples = num_samples(frames)
    if not specs:
        return torch.zeros(0, samples)
    return torch.stack([_waveform(spec, samples) for spec in specs]).float()  # (N, S)


def _window(device: torch.device | None = None) -> Tensor:
    return torch.hann_window(N_FFT, device=device)


def _stft(waveforms: Tensor) -> Tensor:
    """Complex STFT ``(N, N_FFT / 2 + 1, 1 + S // HOP)`` of waveforms ``(N, S)``."""
    return torch.stft(waveforms, N_FFT, HOP, window=_window(waveforms.device), center=True, return_complex=True)


def _istft(spectrum: Tensor) -> Tensor:
    """Waveforms ``(N, (columns - 1) HOP)`` of a complex STFT ``(N, N_FFT / 2 + 1, columns)``."""
    length = (spectrum.shape[-1] - 1) * HOP
    return torch.istft(spectrum, N_FFT, HOP, window=_window(spectrum.device), center=True, length=length)


def spectrogram(waveforms: Tensor) -> Tensor:
    """Magnitude spectrogram ``(N, N_FFT / 2 + 1, 1 + S // HOP)`` of waveforms ``(N, S)`` (Hann window, centred)."""
    if waveforms.ndim != 2 or not torch.is_floating_point(waveforms):
        raise ValueError(f"waveforms must be a float tensor (N, S); got {waveforms.dtype} {tuple(waveforms.shape)}")
    return _stft(waveforms).abs()


def magnitude_to_frames(magnitude: Tensor) -> Tensor:
    """A magnitude spectrogram ``(N, F, T W)`` (``F >= BINS``; bins above ``BINS`` dropped) -> frames
    ``(N, BINS, W, T, 1)`` in ``[-1, 1]``: dB re ``REFERENCE`` clamped to ``[-DB_RANGE, 0]``, low bins at the bottom.

    Raises:
        ValueError: if the spectrogram has fewer than ``BINS`` bins or its columns are not a multiple of ``W``.
    """
    n, bins, columns = magnitude.shape
    if bins < BINS or columns % COLUMNS_PER_FRAME:
        raise ValueError(f"magnitude must be (N, F >= {BINS}, T * {COLUMNS_PER_FRAME}); got {tuple(magnitude.shape)}; "
                         "synthesise waveforms of num_samples(T) samples")
    decibels = 20 * torch.log10(magnitude[:, :BINS].clamp_min(1e-12) / REFERENCE)
    scaled = decibels.clamp(-DB_RANGE, 0) * (2 / DB_RANGE) + 1  # (N, H, T W) in [-1, 1], row k = bin k
    frames = scaled.flip(1).reshape(n, BINS, columns // COLUMNS_PER_FRAME, COLUMNS_PER_FRAME)  # (N, H, T, W)
    return frames.permute(0, 1, 3, 2).unsqueeze(-1).contiguous()  # (N, H, W, T, 1)


def to_frames(waveforms: Tensor) -> Tensor:
    """Waveforms ``(N, S)`` -> spectrogram frames ``(N, H, W, T, 1)`` in ``[-1, 1]``, ``T = (1 + S // HOP) / W``.

    Raises:
        ValueError: if ``1 + S // HOP`` is not a multiple of ``W`` (pass ``num_samples(T)`` samples).
    """
    return magnitude_to_frames(spectrogram(waveforms))


def _check_frames(frames: Tensor) -> None:
    if frames.ndim != 5 or frames.shape[1:3] != (BINS, COLUMNS_PER_FRAME) or frames.shape[4] != 1:
        raise ValueError(f"frames must have shape (N, {BINS}, {COLUMNS_PER_FRAME}, T, 1); got {tuple(frames.shape)}")


def _frames_to_decibels(frames: Tensor) -> Tensor:
    """Frames ``(N, H, W, T, 1)`` -> dB ``(N, H, T W)`` with bin ``k`` at index ``k`` (values not clamped)."""
    _check_frames(frames)
    n, _, _, t, _ = frames.shape
    columns = frames[..., 0].permute(0, 1, 3, 2).reshape(n, BINS, t * COLUMNS_PER_FRAME)  # (N, H, T W)
    return (columns.flip(1) - 1) * (DB_RANGE / 2)


def from_frames(frames: Tensor) -> Tensor:
    """Inverse of ``magnitude_to_frames``: frames ``(N, H, W, T, 1)`` -> magnitudes ``(N, H, T W)``, bin ``k`` at index
    ``k``; ``magnitude_to_frames(from_frames(x)) == x`` for ``x`` in ``[-1, 1]``."""
    return REFERENCE * 10 ** (_frames_to_decibels(frames) / 20)


def griffin_lim(magnitude: Tensor, n_iter: int = 32, momentum: float = 0.99, seed: int = 0) -> Tensor:
    """A waveform whose STFT magnitude approaches ``magnitude``, by (fast) Griffin-Lim.

    Alternates the projection on consistent spectrograms, ``c = STFT(ISTFT(t))``, with putting back the target
    magnitude, ``c <- |M| c / |c|``, and extrapolates ``t = c_n + momentum (c_n - c_{n-1})`` (Perraudin et al. 2013;
    ``momentum = 0`` is the original algorithm of Griffin & Lim 1984). The start phase is uniform random from
    ``torch.Generator().manual_seed(seed)``, so the result is deterministic.

    Args:
        magnitude: ``(N, F, columns)`` with ``F <= N_FFT / 2 + 1`` (``from_frames`` gives ``F = BINS``); the bins
            above ``F`` are taken as zero.
        n_iter: iterations, >= 1.
        momentum: in ``[0, 1)``.
        seed: seed of the start phase.
    Returns:
        ``(N, (columns - 1) HOP)`` float32 waveforms at ``SAMPLE_RATE``.
    """
    full = N_FFT // 2 + 1
    if magnitude.ndim != 3 or magnitude.shape[1] > full or magnitude.shape[2] < 2:
        raise ValueError(f"magnitude must be (N, F <= {full}, columns >= 2); got {tuple(magnitude.shape)}")
    if n_iter < 1 or not 0 <= momentum < 1:
        raise ValueError(f"need n_iter >= 1 and 0 <= momentum < 1; got n_iter={n_iter}, momentum={momentum}")
    target = torch.nn.functional.pad(magnitude.float(), (0, 0, 0, full - magnitude.shape[1]))  # (N, F_full, columns)
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(target.shape, generator=generator).to(target.device) * (2 * math.pi)
    estimate = previous = torch.polar(target, phase)
    for _ in range(n_iter):
        consistent = _stft(_istft(estimate))
        current = target * torch.sgn(consistent)  # the target magnitude with the consistent phase
        estimate = current + momentum * (current - previous)
        previous = current
    return _istft(previous)


def spectral_convergence(waveforms: Tensor, magnitude: Tensor) -> Tensor:
    """``|| |STFT(x)| - M ||_F / || M ||_F`` per sample: ``(N,)`` for waveforms ``(N, S)`` and magnitudes
    ``(N, F, columns)`` (bins above ``F`` compared with zero; ``columns = 1 + S // HOP``)."""
    measured = spectrogram(waveforms)
    full, columns = measured.shape[1:]
    if magnitude.ndim != 3 or magnitude.shape[1] > full or magnitude.shape[2] != columns:
        raise ValueError(f"magnitude must be (N, F <= {full}, {columns}) to match the waveforms; "
                         f"got {tuple(magnitude.shape)}")
    target = torch.nn.functional.pad(magnitude, (0, 0, 0, full - magnitude.shape[1]))
    return (measured - target).flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1)


def wav_bytes(waveform: Tensor, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit PCM WAV file in memory (``IPython.display.Audio`` plays it) of a waveform ``(S,)`` in
    ``[-1, 1]``: a sample ``x`` is stored as ``round(32767 x)``; values beyond are clipped (Griffin-Lim can overshoot
    ``AMPLITUDE`` a little; divide by ``waveform.abs().max()`` to normalise)."""
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be one mono signal (S,); got shape {tuple(waveform.shape)}; pass x[i]")
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive number of Hz; got {sample_rate}")
    pcm = np.round(waveform.detach().cpu().double().clamp(-1, 1).numpy() * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(pcm.tobytes())
    return buffer.getvalue()


def write_wav(path: str | Path, waveform: Tensor, sample_rate: int = SAMPLE_RATE, overwrite: bool = False) -> Path:
    """Write ``wav_bytes(waveform, sample_rate)`` to ``path`` and return it.

    Raises:
        InputError: if ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; pass overwrite=True to replace it or choose another path")
    path.write_bytes(wav_bytes(waveform, sample_rate))
    return path


def _sounding(decibels: Tensor) -> Tensor:
    """``(N, columns)`` bool: hysteresis on the column energy, on above ``ON_DB``, off below ``OFF_DB``."""
    energy = 10 * torch.log10((10 ** (decibels / 10)).sum(1))  # (N, columns) dB re REFERENCE
    state = torch.zeros(energy.shape[0], dtype=torch.bool, device=energy.device)
    sounding = torch.zeros_like(energy, dtype=torch.bool)
    for column in range(energy.shape[1]):
        state = (state & (energy[:, column] >= OFF_DB)) | (energy[:, column] > ON_DB)
        sounding[:, column] = state
    return sounding


def _starts(sounding: Tensor) -> Tensor:
    """``(..., columns)`` bool: the sounding columns whose previous column (or the start) is silent."""
    return sounding & ~torch.nn.functional.pad(sounding, (1, 0))[..., :-1]


def _refine(decibels: Tensor, peak: Tensor) -> Tensor:
    """Frequencies in Hz of peak bins ``peak`` (long, any shape ``(..., K)``) of spectra ``(..., H)`` in dB: the vertex
    of the parabola through the peak and its two neighbours (the peak bin itself at the edges)."""
    inner = peak.clamp(1, BINS - 2)
    left, centre, right = (decibels.gather(-1, inner + shift) for shift in (-1, 0, 1))
    curvature = left - 2 * centre + right
    offset = torch.where(curvature < 0, 0.5 * (left - right) / curvature.clamp(max=-1e-6), torch.zeros_like(centre))
    offset = torch.where(inner == peak, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))
    return (peak + offset) * (SAMPLE_RATE / N_FFT)


def pitch_track(frames: Tensor) -> Tensor:
    """The pitch in Hz of every column of frames ``(N, H, W, T, 1)``: ``(N, T W)``, NaN where silent.

    A column's pitch is its peak bin (DC excluded) refined by parabolic interpolation on the dB values (within a few
    hundredths of a bin for a Hann window); a column is silent while the energy hysteresis (``ON_DB`` / ``OFF_DB``) is
    off.
    """
    decibels = _frames_to_decibels(frames)
    return _track(decibels, _sounding(decibels))


def _track(decibels: Tensor, sounding: Tensor) -> Tensor:
    """``pitch_track`` of dB spectrograms ``(N, H, columns)`` with their sounding columns ``(N, columns)``."""
    spectra = decibels.transpose(1, 2)  # (N, columns, H)
    peak = spectra[..., 1:].argmax(-1, keepdim=True) + 1  # (N, columns, 1); the DC bin carries no pitch
    hertz = _refine(spectra, peak)[..., 0]
    return torch.where(sounding, hertz, torch.full_like(hertz, math.nan))


def onsets(frames: Tensor) -> list[list[int]]:
    """For each clip of frames ``(N, H, W, T, 1)``, the columns where its energy rises through ``ON_DB`` after having
    fallen below ``OFF_DB`` (or since the start): the columns where a note begins."""
    return [row.nonzero().flatten().tolist() for row in _starts(_sounding(_frames_to_decibels(frames)))]


def semitones(hertz: Tensor | float) -> Tensor:
    """MIDI pitch ``69 + 12 log2(f / 440)``: semitones above C-1, so 440 Hz is 69 and one semitone is 1."""
    return 69 + 12 * torch.log2(torch.as_tensor(hertz, dtype=torch.float32) / 440)


@dataclass(frozen=True)
class SoundReading:
    """What the frames of one clip say (``read_sounds``).

    Attributes:
        kind: one of ``KINDS``, or ``"silence"`` when no column sounds.
        pitch: Hz; the energy-weighted mean of the pitch track in semitones; for a chord the median of its lowest
            tone; for a rising or falling tone the start of a straight line fitted (in semitones) to the pitch track
            of the sounding columns, at the first of them. NaN for silence.
        end_pitch: Hz; that line at the last sounding column for a rising or falling tone; ``pitch`` otherwise.
        tones: simultaneous tones, the median over sounding columns of the peaks within ``PEAK_DB`` of the top.
        onsets: number of onsets.
        sounding_fraction: fraction of the columns that sound.
    """

    kind: str
    pitch: float
    end_pitch: float
    tones: int
    onsets: int
    sounding_fraction: float


def _column_peaks(decibels: Tensor) -> tuple[Tensor, Tensor]:
    """Per column of spectra ``(C, H)`` in dB: the number of local maxima within ``PEAK_DB`` of the column's top
    ``(C,)`` and the refined frequency of the lowest one ``(C,)``."""
    centre = decibels[:, 1:-1]
    is_peak = ((centre > decibels[:, :-2]) & (centre >= decibels[:, 2:])
               & (centre >= decibels.amax(1, keepdim=True) - PEAK_DB))  # (C, H - 2)
    lowest = is_peak.float().argmax(1, keepdim=True) + 1  # (C, 1) bin of the lowest peak
    return is_peak.sum(1), _refine(decibels, lowest)[:, 0]


def _hertz(pitch: float) -> float:
    """Inverse of ``semitones``."""
    return 440 * 2 ** ((pitch - 69) / 12)


def _read(decibels: Tensor, sounding: Tensor, hertz: Tensor) -> SoundReading:
    """The reading of one clip from its dB spectrogram ``(H, columns)``, sounding columns and pitch track."""
    columns = sounding.nonzero().flatten()
    if len(columns) == 0:
        return SoundReading("silence", math.nan, math.nan, 0, 0, 0.0)
    count = int(_starts(sounding).sum())
    fraction = len(columns) / sounding.numel()
    spectra = decibels[:, columns].T  # (C, H)
    peaks, lowest = _column_peaks(spectra)
    tones = int(peaks.median())
    track = semitones(hertz[columns])
    if tones >= 2:
        root = float(semitones(lowest).median())
        return SoundReading("chord", _hertz(root), _hertz(root), tones, count, fraction)
    weights = (10 ** (spectra / 10)).sum(1)  # column energies
    mean = float((weights * track).sum() / weights.sum())
    if count >= 2 or fraction < BEEP_MAX_FRACTION:
        return SoundReading("beeps", _hertz(mean), _hertz(mean), tones, count, fraction)
    time = columns.float() - columns.float().mean()
    slope = float((time * track).sum() / (time**2).sum().clamp_min(1e-12))  # least squares, semitones per column
    start, end = float(track.mean() + slope * time[0]), float(track.mean() + slope * time[-1])
    if abs(end - start) <= CHIRP_SEMITONES:
        return SoundReading("steady", _hertz(mean), _hertz(mean), tones, count, fraction)
    return SoundReading("rising" if end > start else "falling", _hertz(start), _hertz(end), tones, count, fraction)


def read_sounds(frames: Tensor) -> list[SoundReading]:
    """Read kind, pitch, tones and onsets of every clip of frames ``(N, H, W, T, 1)`` from the frames alone."""
    decibels = _frames_to_decibels(frames)  # (N, H, T W)
    sounding = _sounding(decibels)
    hertz = _track(decibels, sounding)
    return [_read(decibels[i], sounding[i], hertz[i]) for i in range(frames.shape[0])]


def _pitch_error(spec: SoundSpec, read: SoundReading) -> float:
    """Semitones between the read and the captioned pitch; for a chirp the mean over its start and end."""
    if spec.kind in ("rising", "falling"):
        errors = [semitones(read.pitch) - semitones(PITCHES[spec.pitch]),
                  semitones(read.end_pitch) - semitones(PITCHES[spec.end_pitch])]
    else:
        errors = [semitones(read.pitch) - semitones(PITCHES[spec.pitch])]
    return float(sum(abs(float(e)) for e in errors) / len(errors))


def sound_report(frames: Tensor, captions: Sequence[str]) -> dict[str, Any]:
    """How well spectrogram frames ``(N, H, W, T, 1)`` match their ``N`` captions, read from the frames alone.

    Returns:
        ``"clips"``: per clip a dict with ``"expected"`` (the parsed ``SoundSpec``), ``"read"`` (its ``SoundReading``),
        ``"kind_correct"`` (the read kind equals the caption's), ``"pitch_error"`` (semitones between the read and the
        captioned pitch, for a chirp the mean of start and end errors; NaN for silence), ``"onset_count_correct"``
        (onsets read = the beeps captioned, 1 for the other kinds), ``"tone_count_correct"`` (simultaneous tones read =
        the chord's tones, 1 for the other kinds) and ``"correct"`` (all of these, pitch within ``PITCH_TOLERANCE``);
        and their means ``"kind_correct"``, ``"pitch_error"`` (over clips where it is defined; NaN if none),
        ``"onset_count_correct"``, ``"tone_count_correct"`` and ``"sound_accuracy"`` (the fraction correct).
    Raises:
        ValueError: for a caption outside the grammar or not one caption per clip.
    """
    _check_frames(frames)
    if not captions or len(captions) != frames.shape[0]:
        raise ValueError(f"need one caption per clip; got {len(captions)} captions for {frames.shape[0]} clips")
    clips = []
    for text, read in zip(captions, read_sounds(frames)):
        spec = parse_sound_caption(text)
        error = _pitch_error(spec, read)
        clip = {
            "expected": spec, "read": read, "kind_correct": read.kind == spec.kind, "pitch_error": error,
            "onset_count_correct": read.onsets == (spec.count if spec.kind == "beeps" else 1),
            "tone_count_correct": read.tones == (spec.count if spec.kind == "chord" else 1),
        }
        clip["correct"] = (clip["kind_correct"] and clip["onset_count_correct"] and clip["tone_count_correct"]
                           and error <= PITCH_TOLERANCE)
        clips.append(clip)
    errors = [c["pitch_error"] for c in clips if not math.isnan(c["pitch_error"])]
    report: dict[str, Any] = {"clips": clips}
    for key in ("kind_correct", "onset_count_correct", "tone_count_correct"):
        report[key] = sum(c[key] for c in clips) / len(clips)
    report["pitch_error"] = sum(errors) / len(errors) if errors else math.nan
    report["sound_accuracy"] = sum(c["correct"] for c in clips) / len(clips)
    return report


class AudioDataset:
    """An endless stream of captioned sounds as spectrogram frames; batch ``step`` depends only on ``(seed, step)``.

    Args:
        frames: ``T``, frames per clip (``num_samples(T)`` samples, about ``0.256 T`` s).
        seed: the stream's seed.
        tokenizer: a ``minidit.text.tokenizer.Tokenizer`` (e.g. ``Tokenizer(VOCABULARY)``); with one, ``get_batch``
            returns the captions' token ids.
        text_length: tokens per caption, ``[BOS]`` and ``[EOS]`` included (the longest caption takes 9).
    """

    def __init__(self, frames: int = 4, seed: int = 0, tokenizer: Tokenizer | None = None, text_length: int = 16):
        num_samples(frames)  # fail now on a bad frame count
        self.frames, self.seed, self.tokenizer, self.text_length = frames, seed, tokenizer, text_length

    def sounds(self, step: int, batch_size: int) -> list[SoundSpec]:
        """The sounds of batch ``step``."""
        return sample_sounds(batch_size, (self.seed, step))

    def captions(self, step: int, batch_size: int) -> list[str]:
        """The captions of batch ``step``."""
        return [caption(spec) for spec in self.sounds(step, batch_size)]

    def get_batch(self, step: int, batch_size: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Batch ``step``: frames ``(B, H, W, T, 1)`` in ``[-1, 1]`` and the conditioning: ``{}`` without a tokenizer,
        else ``"text_ids"`` ``(B, text_length)`` long and ``"text_mask"`` ``(B, text_length)`` bool."""
        specs = self.sounds(step, batch_size)
        conditioning: dict[str, Tensor] = {}
        if self.tokenizer is not None:
            ids, mask = self.tokenizer.encode([caption(spec) for spec in specs], self.text_length)
            conditioning["text_ids"], conditioning["text_mask"] = ids, mask
        return to_frames(synthesise(specs, self.frames)), conditioning
