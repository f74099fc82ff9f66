#!/usr/bin/env python3
"""Normalized facts about a built image, and a diff of two images' facts.

    image_facts.py facts ARCHIVE            # prints the facts as JSON
    image_facts.py compare BUILDKIT KILN [--case NAME --known FILE]
        # prints the differences; exit status 1 if some are unexplained, 3 if all are known ones, 0 if none

ARCHIVE is a `docker save` archive (manifest.json) or an OCI image layout, as a tar (`kiln save --format oci`)
or as a directory. The facts are what the semantics comparison looks at:
- config: Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts, Volumes, Labels, StopSignal, Healthcheck,
  OnBuild, Shell, ArgsEscaped, and the top-level author (empty values count as absent, as Go's omitempty
  makes them);
- history: created_by and empty_layer of each entry;
- layers: their number, and each layer's entries (whiteouts included);
- tree: the merged file tree (layers applied in order with their whiteouts): name, type, mode, uid:gid, size,
  link target and a short sha256 of regular files. Times are ignored.

FILE (known-differences.txt) lists differences that are expected because docker 20.10's BuildKit predates the
BuildKit whose behaviour kiln follows: `CASES :: SECTIONS :: REGEX :: REASON` per line, CASES a comma-separated
list of globs over case names, SECTIONS a comma-separated list of history, tree, layer, layers or config.FIELD,
REGEX searched in
each changed (-/+) diff line. A difference counts as known when a rule matches every one of its changed lines.
"""

import difflib
import fnmatch
import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import subprocess
import sys
import tarfile

CONFIG_KEYS = [
    "Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes", "Labels",
    "StopSignal", "Healthcheck", "OnBuild", "Shell", "ArgsEscaped",
]


class Archive:
    """Files of a tar archive or a directory, by relative path."""

    def __init__(self, path):
        self.dir = path if os.path.isdir(path) else None
        self.members = {}
        if self.dir is None:
            links = {}
            with tarfile.open(path) as t:
                for m in t.getmembers():
                    if m.isfile():
                        self.members[norm(m.name)] = t.extractfile(m).read()
                    elif m.issym():  # `docker save` links a layer it already wrote
                        links[norm(m.name)] = norm(posixpath.normpath(posixpath.join(posixpath.dirname(m.name), m.linkname)))
                    elif m.islnk():
                        links[norm(m.name)] = norm(m.linkname)
            for name, target in links.items():
                if target in self.members:
                    self.members[name] = self.members[target]

    def read(self, name):
        if self.dir is not None:
            with open(os.path.join(self.dir, name), "rb") as f:
                return f.read()
        return self.members[norm(name)]

    def has(self, name):
        if self.dir is not None:
            return os.path.exists(os.path.join(self.dir, name))
        return norm(name) in self.members


def norm(name):
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def decompress(data):
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return subprocess.run(["zstd", "-dc"], input=data, stdout=subprocess.PIPE, check=True).stdout
    return data


def blob(archive, digest):
    algo, hexd = digest.split(":", 1)
    return archive.read(f"blobs/{algo}/{hexd}")


def load(path):
    """(config JSON, [uncompressed layer tar bytes])"""
    a = Archive(path)
    if a.has("manifest.json") and not a.has("index.json"):
        m = json.loads(a.read("manifest.json"))[0]
        return json.loads(a.read(m["Config"])), [decompress(a.read(l)) for l in m["Layers"]]
    desc = json.loads(a.read("index.json"))["manifests"][0]
    while True:
        doc = json.loads(blob(a, desc["digest"]))
        if "manifests" in doc:  # an index: take its first image (the comparison builds one platform)
            desc = doc["manifests"][0]
            continue
        config = json.loads(blob(a, doc["config"]["digest"]))
        return config, [decompress(blob(a, l["digest"])) for l in doc["layers"]]


def entry_facts(m, data):
    kind = {tarfile.REGTYPE: "f", tarfile.AREGTYPE: "f", tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l",
            tarfile.LNKTYPE: "h", tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b", tarfile.FIFOTYPE: "p"}.get(m.type, "?")
    e = {"type": kind, "mode": "%04o" % (m.mode & 0o7777), "owner": f"{m.uid}:{m.gid}"}
    if kind == "f":
        e["size"] = m.size
        e["sha"] = hashlib.sha256(data).hexdigest()[:12]
    if kind in "lh":
        e["link"] = norm(m.linkname) if kind == "h" else m.linkname
    if kind in "cb":
        e["dev"] = f"{m.devmajor},{m.devminor}"
    return e


def fmt_entry(path, e):
    if posixpath.basename(path).startswith(".wh."):
        return f"{path} (whiteout)"  # its mode, owner and type mean nothing
    s = f"{path} {e['type']} {e['mode']} {e['owner']}"
    if "size" in e:
        s += f" size={e['size']} sha={e['sha']}"
    if "link" in e:
        s += f" -> {e['link']}"
    if "dev" in e:
        s += f" dev={e['dev']}"
    return s


def layer_entries(data):
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t.getmembers():
            path = norm(m.name)
            if path in ("", "."):
                continue
            content = t.extractfile(m).read() if m.isfile() else b""
            out.append((path, entry_facts(m, content)))
    return out


def merge(layers):
    tree = {}

    def drop(path, children_only=False):
        prefix = path + "/" if path else ""
        for k in [k for k in tree if k.startswith(prefix) or (k == path and not children_only)]:
            del tree[k]

    for entries in layers:
        for path, _ in entries:  # whiteouts remove what the layers below have
            d, b = posixpath.split(path)
            if b == ".wh..wh..opq":
                drop(d, children_only=True)
            elif b.startswith(".wh."):
                drop(posixpath.join(d, b[4:]))
        for path, e in entries:
            if posixpath.basename(path).startswith(".wh."):
                continue
            old = tree.get(path)
            if old is not None and old["type"] == "d" and e["type"] != "d":
                drop(path, children_only=True)
            tree[path] = e
    for path, e in tree.items():  # a hard link shows its target's content
        if e["type"] == "h" and e.get("link") in tree:
            target = tree[e["link"]]
            e["size"], e["sha"] = target.get("size"), target.get("sha")
    return tree


def changed_entries(layers):
    """Each layer's entries without the directories it repeats unchanged (same type, mode and owner as below):
    a differ emits a parent whose mtime changed, and times are not compared."""
    out = []
    for i, entries in enumerate(layers):
        below = merge(layers[:i])
        out.append([(p, e) for p, e in entries if not (e["type"] == "d" and below.get(p) == e)])
    return out


def empty(v):
    return v is None or v == "" or v == [] or v == {} or v is False


def facts(path):
    config, layers = load(path)
    c = config.get("config") or {}
    cfg = {}
    for k in CONFIG_KEYS:
        v = c.get(k)
        if isinstance(v, dict) and k in ("ExposedPorts", "Volumes"):
            v = sorted(v)
        if not empty(v):
            cfg[k] = v
    if not empty(config.get("author")):
        cfg["author"] = config["author"]
    history = [
        {"created_by": h.get("created_by", ""), "empty_layer": bool(h.get("empty_layer"))}
        for h in config.get("history") or []
    ]
    entries = [layer_entries(l) for l in layers]
    tree = merge(entries)
    return {
        "config": cfg,
        "history": history,
        "layers": [[fmt_entry(p, e) for p, e in sorted(es)] for es in changed_entries(entries)],
        "tree": [fmt_entry(p, tree[p]) for p in sorted(tree)],
    }


def diff_lines(a, b, name_a="buildkit", name_b="kiln"):
    return [l for l in difflib.unified_diff(a, b, name_a, name_b, lineterm="", n=0)
            if not l.startswith(("---", "+++"))]


def by_history(f):
    """history index -> that entry's layer entries (None for empty_layer entries)."""
    layers = iter(f["layers"])
    return [None if h["empty_layer"] else next(layers, []) for h in f["history"]]


def layer_pairs(bk, kl):
    if len(bk["history"]) == len(kl["history"]) and \
            sum(not h["empty_layer"] for h in bk["history"]) == len(bk["layers"]) and \
            sum(not h["empty_layer"] for h in kl["history"]) == len(kl["layers"]):
        for i, (a, b) in enumerate(zip(by_history(bk), by_history(kl))):
            if a is not None or b is not None:
                label = f"history[{i}] {bk['history'][i]['created_by'][:60]!r}"
                yield label, a or [], b or []
    else:
        for i, (a, b) in enumerate(zip(bk["layers"], kl["layers"])):
            yield f"#{i} (histories do not pair)", a, b


def differences(bk, kl):
    """[(section, title, lines)]: what differs, section by section. For history, tree and layers the lines are
    a unified diff (- buildkit, + kiln) without file headers."""
    out = []
    for k in sorted(set(bk["config"]) | set(kl["config"])):
        a, b = bk["config"].get(k), kl["config"].get(k)
        if a != b:
            out.append((f"config.{k}", f"config.{k}:", [f"-{json.dumps(a)}", f"+{json.dumps(b)}"]))
    fmt_h = lambda h: h["created_by"] + ("   [empty_layer]" if h["empty_layer"] else "")
    hd = diff_lines([fmt_h(h) for h in bk["history"]], [fmt_h(h) for h in kl["history"]])
    if hd:
        out.append(("history", "history (- buildkit, + kiln):", hd))
    if len(bk["layers"]) != len(kl["layers"]):
        out.append(("layers", "layers:", [f"-{len(bk['layers'])}", f"+{len(kl['layers'])}"]))
    td = diff_lines(bk["tree"], kl["tree"])
    if td:
        out.append(("tree", "tree (- buildkit, + kiln):", td))
    # Layer by layer, informational: it shows which step a tree difference comes from. Layers are paired with
    # history entries (each entry without empty_layer owns the next layer), so a layer one side leaves out
    # does not shift the others; with histories of different lengths, layers pair by position.
    for label, a, b in layer_pairs(bk, kl):
        ld = diff_lines(a, b)
        if ld:
            out.append(("layer", f"layer of {label} (- buildkit, + kiln):", ld))
    return out


def load_known(path, case):
    """The rules of the known-differences file that apply to `case`: [(section, regex, reason)]."""
    rules = []
    if not path:
        return rules
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = [p.strip() for p in line.split(" :: ")]
            if len(parts) != 4:
                raise SystemExit(f"{path}: want CASES :: SECTION :: REGEX :: REASON, got {line!r}")
            cases, section, regex, reason = parts
            if any(fnmatch.fnmatch(case, c) for c in cases.split(",")):
                rules.append((section, re.compile(regex), reason))
    return rules


def compare(path_bk, path_kiln, case="", known_path=None):
    """(unexplained, explained) differences as printable blocks; explained ones are those whose every
    changed line a rule of the known-differences file matches."""
    rules = load_known(known_path, case)
    unexplained, explained = [], []
    for section, title, lines in differences(facts(path_bk), facts(path_kiln)):
        reasons = []
        ok = True
        for l in lines:
            if not l.startswith(("-", "+")):
                continue
            hit = next((r for s, rx, r in rules if section in s.split(",") and rx.search(l)), None)
            if hit is None:
                ok = False
                break
            if hit not in reasons:
                reasons.append(hit)
        block = title + "\n    " + "\n    ".join(lines)
        if ok and reasons:
            explained.append(block + "\n    known: " + "\n    known: ".join(reasons))
        else:
            unexplained.append(block)
    return unexplained, explained


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "facts":
        json.dump(facts(args[1]), sys.stdout, indent=1)
        print()
        return 0
    if len(args) >= 3 and args[0] == "compare":
        opts = dict(zip(args[3::2], args[4::2]))
        unexplained, explained = compare(args[1], args[2], opts.get("--case", ""), opts.get("--known"))
        for d in unexplained:
            print(d)
        if explained:
            print("known differences (docker 20.10's BuildKit is older than the BuildKit kiln follows):")
            for d in explained:
                print("  " + d.replace("\n", "\n  "))
        return 1 if unexplained else (3 if explained else 0)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
