"""Memory sizes as people write them: "512MB", "4GB", "1.5GiB", "800 M", or a number of bytes.
Decimal units (kB, MB, GB, TB = powers of 1000), binary ones (KiB, MiB, GiB, TiB = powers of 1024);
a bare K/M/G/T is read as binary, as `free -h` and most tools print it."""
from __future__ import annotations

import math
import re

from circuitbench.errors import CircuitbenchError

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_byte_size(value: str | int, what: str = "--max-memory") -> int:
    """Bytes of a size such as "4GB" or "1.5GiB"; a CircuitbenchError naming `what` and the value
    when it is not one (or not positive)."""
    if isinstance(value, bool):
        raise CircuitbenchError(f"{what} {value!r}: expected a size such as 512MB, 4GB or 1.5GiB.")
    if isinstance(value, int):
        number, unit = float(value), ""
    else:
        match = _SIZE.match(value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise CircuitbenchError(f"{what} {value!r}: expected a size such as 512MB, 4GB or 1.5GiB (units: B, kB, "
                                    "MB, GB, TB, KiB, MiB, GiB, TiB).")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = number * _UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise CircuitbenchError(f"{what} {value!r}: a memory size must be positive, e.g. 512MB or 4GB.")
    return int(size)


def format_bytes(n: float) -> str:
    """'850 MB', '1.40 GB' (decimal units, as parse_byte_size reads them back)."""
    if n >= 1000**3:
        return f"{n / 1000**3:.2f} GB"
    if n >= 1000**2:
        return f"{n / 1000**2:.0f} MB"
    return f"{n / 1000:.0f} kB"
