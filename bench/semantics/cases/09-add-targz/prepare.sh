python3 - <<'PY'
import io, tarfile, gzip
def add(t, name, kind, data=b"", mode=0o644, uid=0, gid=0, link=""):
    ti = tarfile.TarInfo(name)
    ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, 1600000000
    if kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif kind == "sym":
        ti.type, ti.linkname = tarfile.SYMTYPE, link
    elif kind == "hard":
        ti.type, ti.linkname = tarfile.LNKTYPE, link
    else:
        ti.size = len(data)
    t.addfile(ti, io.BytesIO(data) if kind == "file" else None)
def build(fileobj):
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as t:
        add(t, "top", "dir", mode=0o750, uid=123, gid=456)
        add(t, "top/file", "file", b"hello\n", mode=0o640, uid=123, gid=456)
        add(t, "top/exec", "file", b"#!/bin/sh\n", mode=0o755, uid=0, gid=0)
        add(t, "top/sym", "sym", link="file", uid=123, gid=456)
        add(t, "top/hard", "hard", link="top/file")
        add(t, "implicit/parent/file", "file", b"deep\n", uid=9, gid=9)
raw = io.BytesIO(); build(raw)
open("plain.tar", "wb").write(raw.getvalue())
with gzip.GzipFile("archive.tar.gz", "wb", mtime=0) as g:
    g.write(raw.getvalue())
open("fake.tar.gz", "wb").write(b"this is not gzip\n")
PY
