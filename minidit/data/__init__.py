"""Data for minidit: the captioned synthetic shapes world (``shapes``), its exact analyser (``analyser``), loaders for
real datasets (``datasets``), and frames ``[H, W, T, C]`` of other modalities with exact metrics: moving shapes
(``video``), turning 3-D objects (``multiview``), tones and beeps as spectrograms (``audio``), served together by
``modalities``. Every source has ``get_batch(step, batch_size)``, deterministic in ``(seed, step)`` so that training
resumes exactly."""
