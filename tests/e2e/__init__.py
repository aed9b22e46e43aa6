"""Whole-system scenarios through the VISA API with the real playbooks: lifecycle, crashes, faults, fuzzing, real
guests, registry faults, bursts."""
