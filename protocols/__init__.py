"""Pure protocol codecs: construct definitions, stream framers, checksums and payload decoders.

Nothing here does I/O, reads a clock, or imports from ``drivers``, ``gateway`` or ``firmware_sim``.
"""
