"""Data for minidit: the captioned synthetic shapes world (``shapes``), its exact analyser (``analyser``) and
loaders for real datasets (``datasets``). Every source has ``get_batch(step, batch_size)``, deterministic in
``(seed, step)`` so that training resumes exactly."""
