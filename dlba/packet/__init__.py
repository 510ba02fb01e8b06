"""The packet scheduler's glue (DESIGN.md §3): frame I/O on AF_PACKET sockets and a tap,
the host's kernel settings (the VIP on loopback, ARP sysctls, nftables rules), and ARP
with scapy.  The per-frame decision is ``dlba.frames``; nothing here decides."""
