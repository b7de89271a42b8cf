"""Python oslo.messaging, as Trove's taskmanager and conductor, against a k2hdkc guest agent.

Usage: oslo_guest.py TRANSPORT_URL EXCHANGE INSTANCE_ID KEY CONDUCTOR_TOPIC

KEY is the per-instance key (secure RPC on, Trove's AES-256-CBC serializer) or "" (off).
Casts `prepare`, waits for a `healthy` heartbeat on the conductor topic, calls `rpc_ping`,
`get_filesystem_stats` and `restart`, checks that an unknown method fails and that the
heartbeats' `sent` increases. Prints `STEP` lines and `all oslo checks passed`.
"""

import base64
import hashlib
import json
import os
import sys
import threading
import time
import warnings

warnings.filterwarnings("ignore")

from cryptography.hazmat.primitives import padding  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from oslo_config import cfg  # noqa: E402
import oslo_messaging as messaging  # noqa: E402

URL, EXCHANGE, INSTANCE, KEY, CONDUCTOR = sys.argv[1:6]
KEY = KEY or None


def aes_key(k):
    return hashlib.md5(k.encode()).hexdigest().encode()


def encrypt(k, value):
    iv = os.urandom(16)
    p = padding.PKCS7(128).padder()
    data = p.update(json.dumps(value).encode()) + p.finalize()
    e = Cipher(algorithms.AES(aes_key(k)), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + e.update(data) + e.finalize()).decode()


def decrypt(k, text):
    raw = base64.b64decode(text)
    d = Cipher(algorithms.AES(aes_key(k)), modes.CBC(raw[:16])).decryptor()
    data = d.update(raw[16:]) + d.finalize()
    u = padding.PKCS7(128).unpadder()
    return json.loads(u.update(data) + u.finalize())


class SecureSerializer(messaging.Serializer):
    """Trove's secure_serializer: every argument value and the context encrypted."""

    def serialize_entity(self, ctxt, entity):
        return encrypt(KEY, entity) if KEY else entity

    def deserialize_entity(self, ctxt, entity):
        return decrypt(KEY, entity) if KEY and isinstance(entity, str) else entity

    def serialize_context(self, ctxt):
        return {"context": encrypt(KEY, ctxt)} if KEY else ctxt

    def deserialize_context(self, ctxt):
        if KEY and "context" in ctxt:
            return decrypt(KEY, ctxt["context"])
        return ctxt


class ConductorSerializer(messaging.Serializer):
    """Trove's conductor_guest_serializer: {"entity": <b64>, "csz-instance-id": id}."""

    def serialize_entity(self, ctxt, entity):
        return entity

    def deserialize_entity(self, ctxt, entity):
        if KEY and isinstance(entity, str) and entity.startswith("{"):
            w = json.loads(entity)
            assert w["csz-instance-id"] == INSTANCE, w
            return decrypt(KEY, w["entity"])
        return entity

    def serialize_context(self, ctxt):
        return ctxt

    def deserialize_context(self, ctxt):
        if KEY and "context" in ctxt:
            return decrypt(KEY, ctxt["context"])
        return ctxt


beats = []
backups = []
lock = threading.Lock()


class Conductor:
    target = messaging.Target(version="1.0")

    def heartbeat(self, ctxt, instance_id, payload, sent=None):
        with lock:
            beats.append((instance_id, payload, sent))

    def update_backup(self, ctxt, instance_id, backup_id, **kw):
        with lock:
            backups.append((instance_id, backup_id, kw))


def step(m):
    print("STEP", m, flush=True)


messaging.set_transport_defaults(control_exchange=EXCHANGE)
cfg.CONF([], project="k2hdkc-test")
transport = messaging.get_rpc_transport(cfg.CONF, url=URL)
server = messaging.get_rpc_server(
    transport,
    messaging.Target(topic=CONDUCTOR, server="conductor-test"),
    [Conductor()],
    executor="threading",
    serializer=ConductorSerializer(),
)
server.start()
try:
    client = messaging.get_rpc_client(
        transport,
        messaging.Target(topic=f"guestagent.{INSTANCE}", version="1.0"),
        serializer=SecureSerializer(),
    )
    ctxt = {"user": "u1", "project_id": "p1", "is_admin": False, "request_id": "req-test"}

    def call(method, timeout=60, version="1.0", **kw):
        return client.prepare(timeout=timeout, version=version).call(ctxt, method, **kw)

    # The guest answers before it is prepared (Trove pings first).
    t0 = time.time()
    while True:
        try:
            pong = call("rpc_ping", timeout=5)
            break
        except messaging.MessagingTimeout:
            if time.time() - t0 > 60:
                raise
    step(f"rpc_ping -> {pong!r} (secure RPC {'on' if KEY else 'off'})")

    client.prepare(version="1.1").cast(
        ctxt, "prepare", packages=[], databases=[], memory_mb=512, users=[],
        device_path=None, mount_point=None, backup_info=None, config_contents=None,
        root_password=None, overrides=None, cluster_config=None, snapshot=None,
        modules=[], ds_version="1.0")
    t0 = time.time()
    while True:
        with lock:
            healthy = [b for b in beats if b[1].get("service_status") == "healthy"]
        if healthy:
            break
        if time.time() - t0 > 120:
            raise AssertionError(f"no healthy heartbeat after prepare; beats: {beats[-5:]}")
        time.sleep(0.2)
    assert all(b[0] == INSTANCE for b in beats), beats
    step(f"prepare cast; heartbeat healthy after {time.time() - t0:.1f}s ({len(beats)} heartbeats)")

    fs = call("get_filesystem_stats", fs_path=None)
    for k in ("block_size", "total_blocks", "free_blocks", "total", "free", "used"):
        assert k in fs, fs
    assert fs["total"] > 0 and fs["free"] <= fs["total"], fs
    step(f"get_filesystem_stats -> total {fs['total']} GB, free {fs['free']} GB")

    r = call("restart", timeout=180)
    assert r is None, r
    n = len(beats)
    t0 = time.time()
    while len(beats) < n + 2 and time.time() - t0 < 30:
        time.sleep(0.2)
    assert beats[-1][1].get("service_status") == "healthy", beats[-3:]
    step("restart -> None; healthy again")

    try:
        call("no_such_method", timeout=30)
        raise AssertionError("an unknown method succeeded")
    except messaging.RemoteError as e:
        step(f"unknown method -> RemoteError {e.exc_type}")

    with lock:
        sent = [b[2] for b in beats]
    assert all(isinstance(s, (int, float)) for s in sent), sent
    assert all(a < b for a, b in zip(sent, sent[1:])), f"sent not increasing: {sent}"
    step(f"{len(sent)} heartbeats, sent strictly increasing")
    print("all oslo checks passed", flush=True)
finally:
    server.stop()
    server.wait()
    transport.cleanup()
