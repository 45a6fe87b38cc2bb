# The native frame decoder (flusher/_columns.c); see flusher/columns.py.

def decode(
    payloads: list[bytes], names: tuple[bytes, ...], kinds: bytes
) -> tuple[int, list[tuple[int, bytes | None, bytes | None, bytes] | None]] | None: ...
