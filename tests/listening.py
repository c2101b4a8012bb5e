"""Which local addresses a TCP port is listening on, read from /proc/net/tcp and tcp6 (Linux)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

LISTEN = "0A"


def listening_addresses(port: int) -> set[str]:
    """Addresses with a socket in LISTEN state on `port`: '127.0.0.1', '0.0.0.0', '::', ..."""
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != LISTEN or int(hex_port, 16) != port or len(address) != width:
                continue
            # the kernel prints each 32-bit word of the address in host (little-endian) byte order
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, width, 8))
            found.add(str(ipaddress.ip_address(raw)))
    return found
