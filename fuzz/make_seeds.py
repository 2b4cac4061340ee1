#!/usr/bin/env python3
"""Writes the hand-made seeds of the parser targets into fuzz/corpus/<target>/seed-*.

The committed corpus is these seeds plus inputs the campaigns found and `cargo fuzz cmin`
kept (docs/FUZZING.md). serve_chain and drain_queue take `arbitrary`-encoded inputs, which
cannot be written by hand: their corpus comes from the fuzzer alone. Needs python3 with the
`cryptography` package; only to regenerate seeds, never to run the fuzzers.
"""

import datetime
import hashlib
import os
import struct
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
STATE_KEY = bytes([7]) * 32  # state_file.rs KEY
HOST_KEY = bytes([0x42]) * 32  # key_record.rs HOST_KEY
PERMANENT_MAGIC = 0xAB364723
VOLATILE_MAGIC = 0x45637889


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def be16(v):
    return struct.pack(">H", v)


def be32(v):
    return struct.pack(">I", v)


def be64(v):
    return struct.pack(">Q", v)


def seal(key, aad, plaintext):
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def libtpms_blob(magic, body=b"\x01\x02\x03\x04"):
    return be16(1) + be32(magic) + body


# --- snapshot ------------------------------------------------------------------------------
def snapshot(perm, vol):
    return b"VTPMSNP1" + be32(len(perm)) + perm + be32(len(vol)) + vol


write("snapshot", "empty-blobs", snapshot(b"", b""))
write("snapshot", "small", snapshot(libtpms_blob(PERMANENT_MAGIC), libtpms_blob(VOLATILE_MAGIC)))
write("snapshot", "truncated", snapshot(b"abc", b"defg")[:-2])

# --- migration_package ---------------------------------------------------------------------
# First byte odd: edits (u16 position, XOR byte; 0xFF cuts) of the real package the target
# seals at start; even: the bytes as they are.
write("migration_package", "real", b"\x01")
write("migration_package", "real-flipped-header", b"\x01" + be16(0x20) + b"\x01")
write("migration_package", "real-flipped-tail", b"\x01" + be16(0xFFF0) + b"\x80")
write("migration_package", "real-cut", b"\x01" + be16(0x0100) + b"\xff")
write("migration_package", "plain-snapshot", b"\x00" + snapshot(b"perm", b"vol"))
write("migration_package", "other-version", b"\x00VTPMMIG1" + be16(2))
write(
    "migration_package", "header-start",
    b"\x00VTPMMIG1" + be16(1) + bytes(16) + bytes(16) + b"\x04vm-1\x06host-a\x06host-b" + be64(3),
)

# --- swtpm_state ---------------------------------------------------------------------------
def swtpm_header(version, flags, total):
    return bytes([version, 1]) + be16(10) + be16(flags) + be32(total)


def tlv(tag, value):
    return be16(tag) + be32(len(value)) + value


def swtpm_file(version, flags, body):
    return swtpm_header(version, flags, 10 + len(body)) + body


perm = libtpms_blob(PERMANENT_MAGIC, bytes(range(32)))
vol = libtpms_blob(VOLATILE_MAGIC, bytes(range(16)))
write("swtpm_state", "bare-permanent", perm)
write("swtpm_state", "v1-volatile", swtpm_file(1, 0, vol))
write("swtpm_state", "v2-plain", swtpm_file(2, 0, tlv(1, perm)))
write("swtpm_state", "v2-encrypted", swtpm_file(2, 1, tlv(6, os.urandom(48)) + tlv(3, os.urandom(32))))
write("swtpm_state", "stateblob-answer", swtpm_file(2, 0, tlv(4, tlv(1, perm))))

# --- tpmt_public, ca_parsers (AIK) ---------------------------------------------------------
RESTRICTED_SIGNING = 0x00050072
ec_key = ec.generate_private_key(ec.SECP256R1())
nums = ec_key.public_key().public_numbers()
ecc_tpmt = (
    be16(0x0023) + be16(0x000B) + be32(RESTRICTED_SIGNING) + be16(0)
    + be16(0x0010)  # symmetric: NULL
    + be16(0x0018) + be16(0x000B)  # ECDSA, SHA-256
    + be16(0x0003)  # NIST P-256
    + be16(0x0010)  # kdf: NULL
    + be16(32) + nums.x.to_bytes(32, "big") + be16(32) + nums.y.to_bytes(32, "big")
)
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
modulus = rsa_key.public_key().public_numbers().n.to_bytes(256, "big")
rsa_tpmt = (
    be16(0x0001) + be16(0x000B) + be32(RESTRICTED_SIGNING) + be16(0)
    + be16(0x0010)
    + be16(0x0014) + be16(0x000B)  # RSASSA, SHA-256
    + be16(2048) + be32(0)
    + be16(256) + modulus
)
write("tpmt_public", "ecc-aik", ecc_tpmt)
write("tpmt_public", "rsa-aik", rsa_tpmt)
write("tpmt_public", "ecc-aik-tpm2b", be16(len(ecc_tpmt)) + ecc_tpmt)

# --- state_file ----------------------------------------------------------------------------
def plaintext(engine, blobs):
    out = bytes([len(engine)]) + engine + be16(len(blobs))
    for name, data in blobs:
        out += bytes([len(name)]) + name + be32(len(data)) + data
    return out


instance = bytes(range(16))
plain = plaintext(b"libtpms", [(b"permall", perm), (b"volatilestate", vol)])
header = b"VTPMSTAT" + be16(1) + be16(0) + instance + be64(5) + be32(len(plain) + 28)
write("state_file", "raw-sealed", b"\x00" + header + seal(STATE_KEY, header, plain))
write("state_file", "plaintext", b"\x01" + instance + be64(5) + plain)
write("state_file", "plaintext-empty", b"\x01" + instance + be64(0) + plaintext(b"swtpm", []))
prefix = b"VTPMGEN1" + instance + be64(5)
write("state_file", "anchor", b"\x02" + prefix + seal(STATE_KEY, prefix, b""))

# --- key_record ----------------------------------------------------------------------------
key_id = hashlib.sha256(HOST_KEY).digest()[:8]
body_len = 8 + 32 + 28
record_header = b"VTPMKEY1" + be16(1) + be16(2) + instance + be32(body_len)
wrapped = seal(HOST_KEY, record_header + key_id, os.urandom(32))
write("key_record", "key-file", record_header + key_id + wrapped)
tpm_header = b"VTPMKEY1" + be16(1) + be16(1) + instance + be32(8)
write("key_record", "host-tpm", tpm_header + be16(2) + b"ab" + be16(2) + b"cd")

# --- ca_parsers, ca_router -----------------------------------------------------------------
def certificate(key, name, issuer_key=None):
    now = datetime.datetime(2026, 1, 1)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
    )
    return builder.sign(issuer_key or key, hashes.SHA256())


ek_cert = certificate(rsa_key, "fuzz EK")
ec_cert = certificate(ec_key, "fuzz ECC")
ek_pem = ek_cert.public_bytes(serialization.Encoding.PEM)
ec_pem = ec_cert.public_bytes(serialization.Encoding.PEM)
write("ca_parsers", "pem", b"\x00" + ec_pem)
write("ca_parsers", "pem-chain", b"\x01" + ec_pem + b"\x00" + ek_pem)
write("ca_parsers", "aik-tpm2b", b"\x02" + be16(len(ecc_tpmt)) + ecc_tpmt)
write("ca_parsers", "aik-tpmt-rsa", b"\x03" + rsa_tpmt)
write("ca_parsers", "ek-der", b"\x04" + ek_cert.public_bytes(serialization.Encoding.DER))
write("ca_parsers", "cert-der", b"\x05" + ec_cert.public_bytes(serialization.Encoding.DER))


def json_str(b):
    return b.decode().replace("\n", "\\n")


def request(name, method, path, body=b"", headers=()):
    head = f"{method} {path}\n" + "".join(f"{h}\n" for h in headers)
    write("ca_router", name, head.encode() + b"\n" + body)


aik_b64 = __import__("base64").b64encode(be16(len(ecc_tpmt)) + ecc_tpmt).decode()
request("get-ca", "GET", "/v1/ca")
request("get-crl", "GET", "/v1/crl")
request("status", "GET", "/v1/status?fingerprint=" + "ab" * 32)
request(
    "enroll-start", "POST", "/v1/enroll/start",
    f'{{"kind":"host","subject":"host-1","ek_cert_chain":["{json_str(ek_pem)}"],'
    f'"aik_public":"{aik_b64}"}}'.encode(),
)
# The same with the admin's token, which authorises a host enrolment as an enrolment token
# does (vtpm-ca enroll.rs), and an enrolment token being issued.
request(
    "enroll-start-admin", "POST", "/v1/enroll/start",
    f'{{"kind":"host","subject":"host-1","ek_cert_chain":["{json_str(ek_pem)}"],'
    f'"aik_public":"{aik_b64}"}}'.encode(), ["Authorization: Bearer ADMIN"],
)
request(
    "enroll-token", "POST", "/v1/enroll-tokens", b'{"subject":"host-2","validity_secs":600}',
    ["Authorization: Bearer ADMIN"],
)
request("enroll-finish", "POST", "/v1/enroll/finish", b'{"session":"00ff","secret":"AAAA"}')
request(
    "put-cert", "PUT", "/v1/certs/host/fuzz.pem",
    f'{{"pem":"{json_str(ec_pem)}"}}'.encode(), ["Authorization: Bearer ADMIN"],
)
request("get-cert", "GET", "/v1/certs/host/fuzz.pem", headers=["Authorization: Bearer ADMIN"])
request(
    "revoke", "POST", "/v1/revoke",
    f'{{"certificate":"{json_str(ec_pem)}","reason":"keyCompromise"}}'.encode(),
    ["Authorization: Bearer ADMIN"],
)
request("revoke-serial", "POST", "/v1/revoke", b'{"serial":"01"}', ["Authorization: Bearer ADMIN"])
request(
    "coprocessor", "POST", "/v1/coprocessor",
    f'{{"chain":["{json_str(ec_pem)}","{json_str(ek_pem)}"]}}'.encode(),
    ["Authorization: Bearer ADMIN"],
)
print("seeds written under", CORPUS, file=sys.stderr)
