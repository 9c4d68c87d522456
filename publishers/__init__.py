"""Training-side publishers: SB3 callback, PyTorch gradient monitor, system sampler.

Each lives in its own module so that importing one never imports another's heavy
dependencies (``publishers.sb3`` needs stable-baselines3, ``publishers.torch`` torch).
"""
