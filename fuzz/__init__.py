"""Fuzzing of the decoder runtime: structure-aware mutators and the long campaign.

``fuzz.mutator`` cuts a bitstream into sections and mutates them behind a
valid CRC; ``fuzz/fuzz_decode.py`` runs a hypothesis-driven campaign through
``decoder_runtime.decode``. Not installed with the package: run from the
repository root (``pip install -e ".[fuzz]"`` brings hypothesis).
"""
