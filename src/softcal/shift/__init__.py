"""The 15 CIFAR-10-C corruptions, generated in-process; the public API is in ``softcal.shift.corruptions``."""
