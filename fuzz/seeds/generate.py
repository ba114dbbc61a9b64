#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/ (run from anywhere):
real requests, manifests, envelopes, metainfo, RPC messages and configs, valid and invalid.
Fuzzing adds inputs beside these; this script only (re)writes the seed-* files."""

import hashlib
import json
import struct
from pathlib import Path

FUZZ = Path(__file__).resolve().parent.parent
ROOT = FUZZ.parent


def write(target, name, data):
    directory = FUZZ / "corpus" / target
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (directory / f"seed-{name}").write_bytes(data)


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYER = digest(b"layer")
CONFIG = digest(b"config")
CHILD = digest(b"child")

# --- sha256 chaining values (metainfo piece hashes), as core/src/metainfo.rs computes them ---
K = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]
H0 = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]


def rotr(x, n):
    return ((x >> n) | (x << (32 - n))) & 0xFFFFFFFF


def compress(state, block):
    w = list(struct.unpack(">16I", block))
    for i in range(16, 64):
        s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
        s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
        w.append((w[i - 16] + s0 + w[i - 7] + s1) & 0xFFFFFFFF)
    a, b, c, d, e, f, g, h = state
    for i in range(64):
        t1 = (h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) & 0xFFFFFFFF
        t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) & 0xFFFFFFFF
        a, b, c, d, e, f, g, h = (t1 + t2) & 0xFFFFFFFF, a, b, c, (d + t1) & 0xFFFFFFFF, e, f, g
    return [(x + y) & 0xFFFFFFFF for x, y in zip(state, (a, b, c, d, e, f, g, h))]


def metainfo(blob, piece_length=256 * 1024):
    """The JSON metainfo of `blob`: each piece's value is the chaining value after it, the last
    the blob's digest."""
    pieces, state = [], H0
    for start in range(0, len(blob), piece_length):
        piece = blob[start:start + piece_length]
        if start + piece_length >= len(blob):
            pieces.append(hashlib.sha256(blob).hexdigest())
            break
        for offset in range(0, len(piece), 64):
            state = compress(state, piece[offset:offset + 64])
        pieces.append(struct.pack(">8I", *state).hex())
    return {"scheme": "sha256-chain", "digest": digest(blob), "length": len(blob),
            "piece_length": piece_length, "pieces": pieces}


# --- protobuf wire encoding, enough for shoal.v1 messages ---
def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, value):
    if isinstance(value, bool):
        return varint(number << 3) + varint(int(value))
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def message(*fields):
    return b"".join(field(n, v) for n, v in fields)


def grpc(body):
    return b"\x00" + struct.pack(">I", len(body)) + body


def main():
    # digest
    for name, text in [
        ("valid", LAYER), ("empty-blob", digest(b"")), ("sha512", "sha512:" + "ab" * 64),
        ("sha384", "sha384:" + "ab" * 48),
        ("upper", LAYER.upper()), ("short", LAYER[:-1]), ("no-colon", LAYER[7:]),
        ("junk-algo", "sha 256:" + LAYER[7:]), ("empty", ""), ("long", LAYER + "0"),
    ]:
        write("digest", name, text)

    # name: names, tags and references
    for name, text in [
        ("library", "library/ubuntu"), ("deep", "team/sub.group/app-name__x"), ("dashes", "a--b"),
        ("upper", "Team/App"), ("dotdot", "../etc/passwd"), ("double-slash", "a//b"),
        ("tag", "v1.2.3-rc_1"), ("bad-tag", "-latest"), ("digest-ref", LAYER),
        ("long", "a" * 256), ("long-tag", "t" * 129), ("trailing-slash", "app/"),
    ]:
        write("name", name, text)

    # range: 8 bytes of blob length, then the header
    for name, length, header in [
        ("bounded", 10_000, "bytes=0-499"), ("from", 10_000, "bytes=9500-"),
        ("suffix", 10_000, "bytes=-500"), ("past-end", 10, "bytes=5-100"),
        ("spaced", 10, " Bytes= 5 - 5 "), ("multi", 100, "bytes=0-1,5-6"),
        ("reversed", 100, "bytes=5-4"), ("max", 2**64 - 1, "bytes=0-18446744073709551615"),
        ("content-docker", 4096, "0-1023"), ("content-total", 4096, "bytes 0-1023/4096"),
        ("content-star", 4096, "bytes 0-1023/*"), ("content-over", 4096, "bytes 0-1023/1023"),
        ("content-max", 0, "0-18446744073709551615"), ("empty-blob", 0, "bytes=-1"),
    ]:
        write("range", name, struct.pack("<Q", length) + header.encode())

    # registry_path: method byte (GET HEAD PUT POST PATCH DELETE OPTIONS), then path?query
    upload = "0f9e2c1a-7b3d-4c5e-8f60-1a2b3c4d5e6f"
    for name, method, target in [
        ("base", 0, "/v2/"), ("catalog", 0, "/v2/_catalog?n=100&last=team%2Fapp"),
        ("tags", 0, "/v2/library/ubuntu/tags/list?n=10"),
        ("manifest-get", 0, "/v2/library/ubuntu/manifests/latest"),
        ("manifest-head", 1, f"/v2/team/app/manifests/{LAYER}"),
        ("manifest-put", 2, "/v2/team/app/manifests/v1"),
        ("manifest-delete", 5, f"/v2/team/app/manifests/{LAYER}"),
        ("blob-get", 0, f"/v2/team/app/blobs/{LAYER}"),
        ("upload-start", 3, "/v2/team/app/blobs/uploads/"),
        ("upload-mount", 3, f"/v2/team/app/blobs/uploads/?mount={LAYER.replace(':', '%3A')}&from=other%2Frepo"),
        ("upload-monolithic", 3, f"/v2/team/app/blobs/uploads/?digest={LAYER}"),
        ("upload-patch", 4, f"/v2/team/app/blobs/uploads/{upload}"),
        ("upload-commit", 2, f"/v2/team/app/blobs/uploads/{upload}?digest={LAYER}"),
        ("upload-status", 0, f"/v2/team/app/blobs/uploads/{upload}_MTI3LjAuMC4xOjE1MTAw"),
        ("route-words", 0, f"/v2/a/blobs/b/blobs/{LAYER}"), ("traversal", 0, "/v2/../etc/blobs/uploads/"),
        ("encoded-slash", 0, "/v2/a%2Fb/manifests/latest"), ("options", 6, "/v2/team/app/tags/list"),
        ("scope", 0, "/token?scope=repository:team/app:pull,push%20registry:catalog:*&service=shoal"),
        ("referrers", 0, f"/v2/team/app/referrers/{LAYER}?artifactType=application%2Fvnd.example.sbom"),
        ("bad-digest", 0, "/v2/a/blobs/sha256:abc"), ("long-upload-id", 4, "/v2/a/blobs/uploads/" + "x" * 129),
    ]:
        write("registry_path", name, bytes([method]) + target.encode())

    # manifest: content-type selector (0 none, 1 docker, 2 docker list, 3 oci, 4 oci index, 5 json, 6 other)
    docker = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1472, "digest": CONFIG},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 3623807, "digest": LAYER}],
    }
    oci = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": CONFIG, "size": 581},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": LAYER, "size": 3419706,
                    "annotations": {"org.opencontainers.image.title": "layer.tar.gz"}}],
        "annotations": {"org.opencontainers.image.created": "2026-11-23T14:31:36Z"},
    }
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": CHILD, "size": 1022,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": LAYER, "size": 1022,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": CONFIG, "size": 840,
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
             "platform": {"architecture": "unknown", "os": "unknown"}},
        ],
    }
    docker_list = dict(index, mediaType="application/vnd.docker.distribution.manifest.list.v2+json")
    untyped = {k: v for k, v in oci.items() if k != "mediaType"}
    for name, selector, body in [
        ("docker", 1, docker), ("oci", 0, oci), ("oci-index", 4, index), ("docker-list", 2, docker_list),
        ("untyped-oci", 3, untyped), ("untyped-index", 0, {"schemaVersion": 2, "manifests": index["manifests"]}),
        ("mismatch", 4, docker), ("schema1", 0, {"schemaVersion": 1, "name": "a", "tag": "v1", "fsLayers": []}),
        ("bad-digest", 1, dict(docker, config=dict(docker["config"], digest="sha256:zz"))),
        ("no-layers", 1, {k: v for k, v in docker.items() if k != "layers"}),
        ("json-type", 5, oci), ("other-type", 6, oci),
    ]:
        write("manifest", name, bytes([selector]) + json.dumps(body, indent=3).encode())
    write("manifest", "not-object", b"\x00[1, 2, 3]")
    write("manifest", "truncated", b"\x01" + json.dumps(docker).encode()[:80])

    # notification: real envelopes recorded from distribution (testdata), Harbor's shape, images
    samples = ROOT / "proxy/src/preheat/testdata/notification-samples.jsonl"
    for number, line in enumerate(samples.read_text().splitlines()):
        write("notification", f"distribution-{number}", json.dumps(json.loads(line)["body"]))
    harbor = {"Events": [{"Action": "push", "Target": {
        "MediaType": "application/vnd.oci.image.manifest.v1+json", "Repository": "library/app",
        "Digest": LAYER, "Tag": "v1"}}]}
    write("notification", "harbor", json.dumps(harbor))
    write("notification", "missing-target", json.dumps({"events": [{"action": "push"}]}))
    write("notification", "bad-repository", json.dumps({"events": [{"action": "push", "target": {
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "repository": "Bad//Repo", "digest": LAYER}}]}))
    for name, text in [("image-tag", "team/app:v1.2"), ("image-digest", f"team/app@{LAYER}"), ("image-bare", "team/app"),
                       ("image-port", "host:5000/team/app"), ("content-type", "application/vnd.docker.distribution.events.v1+json; charset=utf-8")]:
        write("notification", name, text)

    # metainfo: real documents (1 piece, 3 pieces, empty) and broken ones
    blob = bytes(range(256)) * 2100  # 537,600 bytes: three 256 KiB pieces
    three = metainfo(blob)
    write("metainfo", "three-pieces", json.dumps(three))
    write("metainfo", "one-piece", json.dumps(metainfo(b"hello world\n")))
    write("metainfo", "empty", json.dumps(metainfo(b"")))
    write("metainfo", "wrong-piece-length", json.dumps(dict(three, piece_length=1024 * 1024)))
    write("metainfo", "wrong-count", json.dumps(dict(three, pieces=three["pieces"][:2])))
    write("metainfo", "wrong-scheme", json.dumps(dict(three, scheme="sha256")))
    write("metainfo", "chain-end", json.dumps(dict(three, digest=LAYER)))
    write("metainfo", "huge-length", json.dumps(dict(three, length=2**64 - 1)))

    # bitfield: piece count (u32 LE), then the bits
    for name, count, bits in [
        ("full-8", 8, b"\xff"), ("partial-10", 10, b"\xa5\x80"), ("spare-set", 10, b"\x00\x01"),
        ("empty", 0, b""), ("wrong-length", 9, b"\xff"), ("max-pieces", 4096, b"\x5a" * 512),
        ("huge-count", 2**32 - 1, b"\xff" * 16),
    ]:
        write("bitfield", name, struct.pack("<I", count) + bits)

    # tracker_rpc: even = AnnounceRequest, odd = MetainfoRequest
    def announce(digest_text, namespace, peer_id, addr, complete=False):
        peer = message((1, peer_id), (2, addr), (3, False), (4, complete))
        return message((1, digest_text), (2, namespace), (3, peer))

    for name, body in [
        ("agent", announce(LAYER, "", "4f1c9e0a8b7d4c3e9f2a1b0c", "10.0.3.7:16001")),
        ("seeder-ns", announce(LAYER, "registry.example.com", "agent-1", "[2001:db8::7]:16001", True)),
        ("dns-addr", announce(LAYER, "", "origin-0", "origin-0.origin.shoal.svc.cluster.local:15101", True)),
        ("space-id", announce(LAYER, "", "bad id", "10.0.0.1:16001")),
        ("any-addr", announce(LAYER, "", "agent-2", "0.0.0.0:16001")),
        ("port-zero", announce(LAYER, "", "agent-3", "10.0.0.1:0")),
        ("no-peer", message((1, LAYER))),
        ("bad-digest", announce("sha256:abc", "", "agent", "10.0.0.1:16001")),
    ]:
        write("tracker_rpc", f"announce-{name}", b"\x00" + body)
    write("tracker_rpc", "metainfo", b"\x01" + message((1, LAYER), (2, "team/app")))
    write("tracker_rpc", "metainfo-bad-ns", b"\x01" + message((1, LAYER), (2, "Team//App")))

    # peer_rpc: 0 = GetPiece body (gRPC framed), 1 = SessionRequest, 2 = SessionEvent
    piece = message((1, LAYER), (2, 3), (3, "agent-7"))
    write("peer_rpc", "get-piece", b"\x00" + grpc(piece))
    write("peer_rpc", "get-piece-compressed", b"\x00\x01" + grpc(piece)[1:])
    write("peer_rpc", "get-piece-short", b"\x00" + grpc(piece)[:-3])
    write("peer_rpc", "session", b"\x01" + message((1, LAYER), (2, "agent-7"), (3, "10.0.3.7:16001")))
    write("peer_rpc", "session-bad-peer", b"\x01" + message((1, LAYER), (2, "tab\tid")))
    write("peer_rpc", "handshake", b"\x02" + field(1, message((1, "agent-7"), (2, 10), (3, b"\xa5\x80"))))
    write("peer_rpc", "handshake-spare", b"\x02" + field(1, message((1, "agent-7"), (2, 10), (3, b"\xa5\x81"))))
    write("peer_rpc", "have", b"\x02" + field(2, 7))

    # piece_stream: frame size - 1, then GetPiece response messages
    chunk = message((1, 262144), (2, bytes(range(200))))
    write("piece_stream", "two-chunks", b"\x3f" + grpc(chunk) + grpc(message((1, 262344), (2, b"tail"))))
    write("piece_stream", "one-frame", b"\xff" + grpc(chunk))
    write("piece_stream", "compressed", b"\x10" + b"\x01" + grpc(chunk)[1:])
    write("piece_stream", "oversized", b"\x10" + b"\x00" + struct.pack(">I", 5000) + b"\x00" * 64)
    write("piece_stream", "overrun", b"\x10" + grpc(b"\x12\x7f" + b"x" * 10))
    write("piece_stream", "unknown-field", b"\x07" + grpc(message((1, 5), (9, "skip me"), (2, b"data"))))
    write("piece_stream", "truncated", b"\x07" + grpc(chunk)[:40])

    # config: component (0 proxy, 1 origin, 2 build-index, 3 tracker, 4 agent), then YAML
    for selector, component in enumerate(["proxy", "origin", "build-index", "tracker", "agent"]):
        yaml = (ROOT / "deploy/configs" / f"{component}.yaml").read_text()
        write("config", component, bytes([selector]) + yaml.encode())
    write("config", "unknown-field", b"\x01backend:\n  filesystem:\n    roo: /data\n")
    write("config", "bad-duration", b"\x03peer_ttl: 30 parsecs\n")
    write("config", "empty", b"\x04# only a comment\n")
    write("config", "aliases", b"\x00a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n")


if __name__ == "__main__":
    main()
