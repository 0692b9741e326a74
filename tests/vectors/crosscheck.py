#!/usr/bin/env python3
"""Recompute taptun-v1.txt with independent Python code, and compare.

Needs: pip install noiseprotocol argon2-cffi cryptography
Not run by CI (it would need PyPI packages); run it by hand after changing
the vectors: python3 tests/vectors/crosscheck.py
"""
import base64
import hashlib
import os
import sys

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from noise.connection import Keypair, NoiseConnection

HERE = os.path.dirname(os.path.abspath(__file__))


def load(path):
    vectors, section = {}, None
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line[1:-1]
            vectors[section] = {}
        else:
            key, value = line.split(" = ", 1)
            vectors[section][key] = value
    return vectors


def public(private):
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(*raw)


def check(name, got, want):
    if got != want:
        sys.exit(f"MISMATCH {name}: got {got} want {want}")
    print(f"ok {name}")


def main():
    v = load(os.path.join(HERE, "taptun-v1.txt"))
    p = v["passphrase"]
    key = hash_secret_raw(p["passphrase"].encode(), b"taptun/1 static key", time_cost=2,
                          memory_cost=19456, parallelism=1, hash_len=32, type=Type.ID, version=19)
    check("passphrase.private", base64.b64encode(key).decode(), p["private_base64"])
    check("passphrase.public", base64.b64encode(public(key)).decode(), p["public_base64"])

    k = v["keys"]
    server, client = bytes.fromhex(k["server_private"]), bytes.fromhex(k["client_private"])
    check("keys.server_public", public(server).hex(), k["server_public"])
    check("keys.client_public", public(client).hex(), k["client_public"])
    dh = X25519PrivateKey.from_private_bytes(server).exchange(
        X25519PublicKey.from_public_bytes(public(client)))
    psk = hashlib.blake2s(b"taptun/1 psk" + dh).digest()
    check("keys.psk", psk.hex(), k["psk"])

    for section in ("handshake_chachapoly", "handshake_aesgcm"):
        h = v[section]
        ends = {}
        for role, static, eph in (("i", client, h["initiator_ephemeral_private"]),
                                  ("r", server, h["responder_ephemeral_private"])):
            c = NoiseConnection.from_name(h["protocol"].encode())
            c.set_as_initiator() if role == "i" else c.set_as_responder()
            c.set_prologue(b"taptun/1")
            c.set_psks(psk)
            c.set_keypair_from_private_bytes(Keypair.STATIC, static)
            c.set_keypair_from_private_bytes(Keypair.EPHEMERAL, bytes.fromhex(eph))
            c.start_handshake()
            ends[role] = c
        i, r = ends["i"], ends["r"]
        hello = bytes.fromhex(h["hello"])
        m1 = i.write_message(b"")
        check(f"{section}.message1", m1.hex(), h["message1"])
        r.read_message(m1)
        m2 = r.write_message(hello)
        check(f"{section}.message2", m2.hex(), h["message2"])
        check(f"{section}.hello from message2", bytes(i.read_message(m2)).hex(), h["hello"])
        m3 = i.write_message(hello)
        check(f"{section}.message3", m3.hex(), h["message3"])
        r.read_message(m3)
        frame = bytes.fromhex(h["frame"])
        check(f"{section}.keepalive", r.encrypt(b"").hex(), h["transport_responder_nonce0_keepalive"])
        check(f"{section}.initiator frame", i.encrypt(frame).hex(), h["transport_initiator_nonce0_frame"])
        check(f"{section}.responder frame", r.encrypt(frame).hex(), h["transport_responder_nonce1_frame"])


if __name__ == "__main__":
    main()
