"""Errors raised by the codecs.

::

    ProtocolError
     +-- DecodeError          bytes that do not decode (bad checksum, bad length, unknown command, truncated)
     +-- EncodeError          a value that cannot be encoded (out of range, wrong length)

A framer never raises for bad input on the wire: it counts and skips it. ``DecodeError`` is raised by the
functions that decode one complete frame, so a caller that holds a single frame learns what is wrong with it.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every codec error."""


class DecodeError(ProtocolError):
    """The bytes are not a valid message of this protocol; the message says why."""


class EncodeError(ProtocolError):
    """The value cannot be encoded in this protocol; the message says why."""
