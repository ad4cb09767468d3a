#!/usr/bin/env python3
# Median and p99 of one 8 KiB O_DIRECT write + fdatasync into a 64 MiB file that was only fallocated
# versus one written with zeros first (what the WAL now does). Run from a directory on the disk under test:
#   python3 bench/scripts/fsync_probe.py [DIR]
import os, mmap, time, sys
def run(path, mode, n=2000, size=64<<20, bs=8192):
    fd = os.open(path, os.O_RDWR|os.O_CREAT|os.O_TRUNC|os.O_DIRECT, 0o644)
    if mode == "fallocate":
        os.posix_fallocate(fd, 0, size)
    else:
        z = mmap.mmap(-1, 1<<20); 
        for off in range(0, size, 1<<20): os.pwrite(fd, z, off)
        os.fsync(fd)
    buf = mmap.mmap(-1, bs); buf.write(b"x"*bs)
    lat=[]
    off=0
    for i in range(n):
        t=time.perf_counter()
        os.pwrite(fd, buf, off); os.fdatasync(fd)
        lat.append((time.perf_counter()-t)*1e6); off += bs
    os.close(fd); os.unlink(path)
    lat.sort()
    print(mode, "median us", round(lat[len(lat)//2]), "p99", round(lat[int(len(lat)*.99)]), "per s", round(n/ (sum(lat)/1e6)))
d=(sys.argv[1] if len(sys.argv)>1 else ".")
for _ in range(2):
    run(os.path.join(d,"probe-fallocated"), "fallocate"); run(os.path.join(d,"probe-zeroed"), "zeroed")
