"""The pure core of relaypush: events, payload decoding, decisions and folds.

Standard library and msgspec only: no I/O library may be imported here.
"""
