#!/usr/bin/env python3
"""A second, independent reading of an Enclave Image Format file, written
for the tests from the format's public description (aws-nitro-enclaves-
image-format: a 548-byte big-endian header, 12-byte section headers, CRC-32
over everything but the CRC field; PCR0 over kernel, cmdline and all
ramdisks, PCR1 over kernel, cmdline and the first ramdisk, PCR2 over the
other ramdisks, PCR8 over the signing certificate's DER; each PCR is
SHA-384(48 zero bytes || SHA-384(data))).  It shares no code with cloister.

usage: eif_measure.py IMAGE.eif [--cert CERT.pem] [--list-ramdisk N]
Prints the measurements as JSON (or the cpio entries of ramdisk N)."""
import hashlib
import json
import ssl
import struct
import sys
import zlib

HEADER = struct.Struct(">4sHHQQHH32Q32QII")
SECTION = struct.Struct(">HHQ")
KERNEL, CMDLINE, RAMDISK, SIGNATURE, METADATA = 1, 2, 3, 4, 5


def pcr(parts):
    inner = hashlib.sha384()
    for p in parts:
        inner.update(p)
    return hashlib.sha384(bytes(48) + inner.digest()).hexdigest()


def read(path):
    data = open(path, "rb").read()
    fields = HEADER.unpack_from(data, 0)
    magic, version, flags, mem, cpus, _reserved, count = fields[:7]
    offsets, sizes = fields[7:39], fields[39:71]
    crc = fields[72]
    assert magic == b".eif", "magic"
    assert zlib.crc32(data[HEADER.size:], zlib.crc32(data[:HEADER.size - 4])) == crc, "crc"
    sections = []
    pos = HEADER.size
    for i in range(count):
        assert offsets[i] == pos, "offset"
        kind, _flags, size = SECTION.unpack_from(data, pos)
        assert size == sizes[i], "size"
        body = data[pos + SECTION.size:pos + SECTION.size + size]
        assert len(body) == size, "truncated"
        sections.append((kind, body))
        pos += SECTION.size + size
    assert pos == len(data), "trailing bytes"
    return version, sections


def cpio_entries(blob):
    pos, out = 0, []
    while True:
        head = blob[pos:pos + 110]
        assert head[:6] == b"070701", "cpio magic"
        f = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = blob[pos + 110:pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = blob[pos:pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out.append({"name": name, "mode": "%o" % f[1], "uid": f[2], "gid": f[3], "mtime": f[5],
                    "size": filesize, "sha256": hashlib.sha256(body).hexdigest()})


def main():
    args = sys.argv[1:]
    path = args[0]
    version, sections = read(path)
    if "--list-ramdisk" in args:
        n = int(args[args.index("--list-ramdisk") + 1])
        ramdisks = [b for k, b in sections if k == RAMDISK]
        print(json.dumps(cpio_entries(ramdisks[n]), indent=1))
        return
    kernel = [b for k, b in sections if k == KERNEL]
    cmdline = [b for k, b in sections if k == CMDLINE]
    ramdisks = [b for k, b in sections if k == RAMDISK]
    m = {"PCR0": pcr(kernel + cmdline + ramdisks), "PCR1": pcr(kernel + cmdline + ramdisks[:1]),
         "PCR2": pcr(ramdisks[1:])}
    if "--cert" in args:
        pem = open(args[args.index("--cert") + 1]).read()
        m["PCR8"] = pcr([ssl.PEM_cert_to_DER_cert(pem)])
    print(json.dumps({"EifVersion": version, "Measurements": m}, sort_keys=True))


if __name__ == "__main__":
    main()
