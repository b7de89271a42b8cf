#!/usr/bin/env python3
"""Run the real Python memcached clients, pymemcache and python-memcached, against a server.

Usage: memcache_clients.py --host 127.0.0.1 --port N, or memcache_clients.py --socket PATH (a
Unix socket: `--memcached-socket PATH`, memcached's `-s PATH`)

Every check compares what a client returns with what memcached 1.6 returns for the same calls,
so the script passes against Debian's memcached (`memcached -p N -l 127.0.0.1 -U 0`) as well as
against `k2hdkc server --storage memory --memcached-listen 127.0.0.1:N`. It flushes the server it
is pointed at. It prints one summary line per client (`pymemcache: N checks passed`) and exits 0
when every check passed; otherwise it lists each mismatch on stderr and exits 1. Every wait is
bounded: socket timeouts on every client, sleeps of a few seconds, and an overall alarm.
"""

import argparse
import pickle
import re
import signal
import socket
import sys
import threading
import time
import traceback
from datetime import timedelta

try:
    import memcache
    from pymemcache import serde
    from pymemcache.client.base import Client as PmClient
    from pymemcache.exceptions import (
        MemcacheClientError,
        MemcacheIllegalInputError,
        MemcacheServerError,
    )
except ImportError as e:  # pragma: no cover - reported, not tested
    print(f"memcache_clients.py: missing client module: {e}", file=sys.stderr)
    sys.exit(2)

# Seconds: socket operations, the whole run.
IO_TIMEOUT = 10
OVERALL_TIMEOUT = 170
# Expiry: keys set with a lifetime of 1 or 2 s must be gone after this long (memcached's clock
# ticks once a second, so an item of n seconds lives between n - 1 and n seconds).
EXPIRY_WAIT = 2.2
# The server's default item size limit is 1 MiB: a value of 1000 KiB fits with its key and item
# header, 2 MiB does not.
LARGE_OK = 1000 * 1024
LARGE_TOO_BIG = 2 * 1024 * 1024
MANY_KEYS = 2000
U64_MAX = 2**64 - 1
BINARY = bytes(range(256))


def short(v, limit=120):
    """A repr short enough for a message, whatever the size of `v`."""
    r = repr(v)
    if len(r) > limit:
        r = r[:limit] + f"... ({len(v) if hasattr(v, '__len__') else '?'} long)"
    return r


class Suite:
    """Counts the checks of one client; records each mismatch instead of stopping at the first."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failures = []
        self.section = ""

    def _fail(self, what, detail):
        self.failures.append(f"{self.name}: {self.section}: {what}: {detail}")

    def check(self, what, ok, detail=""):
        if ok:
            self.passed += 1
        else:
            self._fail(what, detail or "check failed")
        return ok

    def eq(self, what, got, want):
        return self.check(what, got == want, f"got {short(got)}, want {short(want)}")

    def raises(self, what, excs, fn, *args, **kwargs):
        """Check that `fn(*args, **kwargs)` raises one of `excs`; return the exception."""
        names = excs.__name__ if isinstance(excs, type) else "/".join(e.__name__ for e in excs)
        try:
            got = fn(*args, **kwargs)
        except excs as e:
            self.passed += 1
            return e
        except Exception as e:  # noqa: BLE001 - reported as a mismatch
            self._fail(what, f"raised {type(e).__name__}: {e}, want {names}")
            return None
        self._fail(what, f"returned {short(got)}, want {names} raised")
        return None

    def run(self, section, *args):
        """Run one section; an unexpected exception fails it and the next section goes on."""
        self.section = section.__name__
        try:
            section(self, *args)
        except Exception as e:  # noqa: BLE001 - reported as a mismatch
            tb = traceback.format_exc(limit=4)
            self._fail("unexpected exception", f"{type(e).__name__}: {e}\n{tb}")


class FlagsSerde:
    """A pymemcache serde that stores bytes as they are and remembers the flags read back."""

    def __init__(self):
        self.flags = {}

    def serialize(self, key, value):
        return value, 0

    def deserialize(self, key, value, flags):
        self.flags[key] = flags
        return value


# ----------------------------------------------------------------------------------------------
# pymemcache
# ----------------------------------------------------------------------------------------------


def pm_client(addr, **kw):
    kw.setdefault("connect_timeout", 5)
    kw.setdefault("timeout", IO_TIMEOUT)
    return PmClient(addr, **kw)


def pm_basic(s, addr):
    c = pm_client(addr, default_noreply=False)
    s.eq("set str", c.set("pm:str", "hello"), True)
    s.eq("get str reads bytes", c.get("pm:str"), b"hello")
    s.eq("set bytes", c.set("pm:bytes", b"\x00\x01abc"), True)
    s.eq("get bytes", c.get("pm:bytes"), b"\x00\x01abc")
    s.eq("set unicode value", c.set("pm:uni", "h\u00e9llo \u2713".encode()), True)
    s.eq("get unicode value", c.get("pm:uni").decode(), "h\u00e9llo \u2713")
    s.eq("set empty value", c.set("pm:empty", b""), True)
    s.eq("get empty value", c.get("pm:empty"), b"")
    s.eq("overwrite", c.set("pm:str", "world"), True)
    s.eq("get overwritten", c.get("pm:str"), b"world")
    s.eq("get missing", c.get("pm:missing"), None)
    s.eq("get missing with default", c.get("pm:missing", default="dflt"), "dflt")
    s.eq("dict-style set/get", (c.__setitem__("pm:item", b"v"), c["pm:item"])[1], b"v")
    long_key = "pm:" + "k" * 247
    s.eq("set 250-byte key", c.set(long_key, b"long"), True)
    s.eq("get 250-byte key", c.get(long_key), b"long")
    s.raises("251-byte key refused", MemcacheIllegalInputError, c.set, long_key + "k", b"x")
    s.raises("key with a space refused", MemcacheIllegalInputError, c.set, "pm:a b", b"x")
    s.raises("key with a newline refused", MemcacheIllegalInputError, c.get, "pm:a\nb")
    s.raises("non-ASCII key refused", MemcacheIllegalInputError, c.set, "pm:\u043a\u043b", b"x")
    u = pm_client(addr, default_noreply=False, allow_unicode_keys=True)
    ukey = "pm:\u043a\u043b\u044e\u0447-\u00fc"
    s.eq("set UTF-8 key", u.set(ukey, b"unicode key"), True)
    s.eq("get UTF-8 key", u.get(ukey), b"unicode key")
    s.eq("get_many UTF-8 key", u.get_many([ukey, "pm:str"]),
         {ukey: b"unicode key", "pm:str": b"world"})
    s.eq("version is VERSION x.y.z", bool(re.match(rb"^\d+\.\d+\.\d+", c.version())), True)
    c.quit()
    s.eq("get after quit reconnects", c.get("pm:str"), b"world")
    c.close()
    u.close()


def pm_multi(s, addr):
    c = pm_client(addr, default_noreply=False)
    values = {f"pm:m{i}": f"value-{i}".encode() for i in range(5)}
    s.eq("set_many", c.set_many(values), [])
    got = c.get_many(list(values) + ["pm:m-missing"])
    s.eq("get_many", got, values)
    s.eq("get_multi alias", c.get_multi(["pm:m0", "pm:m4"]),
         {k: values[k] for k in ("pm:m0", "pm:m4")})
    s.eq("get_many of none", c.get_many([]), {})
    s.eq("get_many of missing", c.get_many(["pm:m-missing", "pm:m-missing2"]), {})
    gm = c.gets_many(list(values))
    s.eq("gets_many values", {k: v[0] for k, v in gm.items()}, values)
    cas = [v[1] for v in gm.values()]
    s.check("gets_many cas are numbers", all(x.isdigit() for x in cas), f"cas {cas}")
    s.eq("gets_many cas are distinct", len(set(cas)), len(values))
    s.eq("get_many repeated key", c.get_many(["pm:m1", "pm:m1"]), {"pm:m1": values["pm:m1"]})
    c.close()


def pm_store_commands(s, addr):
    c = pm_client(addr, default_noreply=False)
    c.delete("pm:add")
    s.eq("add new", c.add("pm:add", b"first"), True)
    s.eq("add existing", c.add("pm:add", b"second"), False)
    s.eq("add existing keeps value", c.get("pm:add"), b"first")
    s.eq("replace missing", c.replace("pm:rep-missing", b"x"), False)
    s.eq("replace missing stores nothing", c.get("pm:rep-missing"), None)
    s.eq("replace existing", c.replace("pm:add", b"replaced"), True)
    s.eq("get replaced", c.get("pm:add"), b"replaced")
    s.eq("append", c.append("pm:add", b"-tail"), True)
    s.eq("prepend", c.prepend("pm:add", b"head-"), True)
    s.eq("get appended and prepended", c.get("pm:add"), b"head-replaced-tail")
    s.eq("append missing", c.append("pm:app-missing", b"x"), False)
    s.eq("prepend missing", c.prepend("pm:app-missing", b"x"), False)
    s.eq("append/prepend missing store nothing", c.get("pm:app-missing"), None)
    s.eq("append binary", c.append("pm:add", b"\r\n\x00"), True)
    s.eq("get binary append", c.get("pm:add"), b"head-replaced-tail\r\n\x00")
    c.close()


def pm_cas(s, addr):
    c = pm_client(addr, default_noreply=False)
    c.delete("pm:cas")
    s.eq("gets missing", c.gets("pm:cas"), (None, None))
    s.eq("cas missing is NOT_FOUND", c.cas("pm:cas", b"v", b"1"), None)
    c.set("pm:cas", b"v1")
    v, cas1 = c.gets("pm:cas")
    s.eq("gets value", v, b"v1")
    s.check("gets cas is a number", cas1 is not None and cas1.isdigit(), f"cas {cas1!r}")
    s.eq("gets again, same cas", c.gets("pm:cas"), (b"v1", cas1))
    s.eq("cas with current token", c.cas("pm:cas", b"v2", cas1), True)
    s.eq("get after cas", c.get("pm:cas"), b"v2")
    s.eq("cas with stale token is EXISTS", c.cas("pm:cas", b"v3", cas1), False)
    s.eq("stale cas keeps value", c.get("pm:cas"), b"v2")
    v, cas2 = c.gets("pm:cas")
    s.check("cas changed by cas", cas2 != cas1, f"{cas1!r} then {cas2!r}")
    c.append("pm:cas", b"+")
    v, cas3 = c.gets("pm:cas")
    s.check("cas changed by append", cas3 != cas2, f"{cas2!r} then {cas3!r}")
    s.eq("cas token from before append is stale", c.cas("pm:cas", b"x", cas2), False)
    c.set("pm:cas", b"v4")
    s.eq("cas token from before set is stale", c.cas("pm:cas", b"x", cas3), False)
    v, cas4 = c.gets("pm:cas")
    c.delete("pm:cas")
    s.eq("cas on deleted key is NOT_FOUND", c.cas("pm:cas", b"x", cas4), None)
    s.eq("cas on deleted key stores nothing", c.get("pm:cas"), None)
    c.close()


def pm_delete(s, addr):
    c = pm_client(addr, default_noreply=False)
    c.set_many({"pm:d1": b"1", "pm:d2": b"2", "pm:d3": b"3"})
    s.eq("delete existing", c.delete("pm:d1"), True)
    s.eq("deleted key is gone", c.get("pm:d1"), None)
    s.eq("delete missing", c.delete("pm:d1"), False)
    s.eq("delete_many", c.delete_many(["pm:d2", "pm:d3", "pm:d-missing"]), True)
    s.eq("delete_many removed all", c.get_many(["pm:d2", "pm:d3"]), {})
    s.eq("delete_many of none", c.delete_many([]), True)
    s.eq("add after delete", c.add("pm:d1", b"again"), True)
    s.eq("get re-added", c.get("pm:d1"), b"again")
    c.close()


def pm_incr_decr(s, addr):
    c = pm_client(addr, default_noreply=False)
    c.set("pm:n", b"10")
    s.eq("incr", c.incr("pm:n", 5), 15)
    s.eq("decr", c.decr("pm:n", 3), 12)
    s.eq("get after incr/decr", c.get("pm:n"), b"12")
    s.eq("incr by 0", c.incr("pm:n", 0), 12)
    s.eq("decr floors at 0", c.decr("pm:n", 100), 0)
    # memcached decrements in place and pads a shorter number with spaces to the old length; the
    # protocol allows but does not promise that ("MAY be space-padded"), so both are accepted.
    got = c.get("pm:n")
    s.check("get after decr to a shorter number", got in (b"0", b"0 "), f"got {got!r}")
    s.eq("incr of a padded number", c.incr("pm:n", 7), 7)
    got = c.get("pm:n")
    s.check("get after incr of a padded number", got in (b"7", b"7 "), f"got {got!r}")
    s.eq("decr to 0", c.decr("pm:n", 7), 0)
    s.eq("decr of 0 stays 0", c.decr("pm:n", 1), 0)
    c.set("pm:n", b"99")
    s.eq("incr to a longer number", c.incr("pm:n", 1), 100)
    s.eq("get longer number", c.get("pm:n"), b"100")
    s.eq("incr missing", c.incr("pm:n-missing", 1), None)
    s.eq("decr missing", c.decr("pm:n-missing", 1), None)
    s.eq("incr missing creates nothing", c.get("pm:n-missing"), None)
    c.set("pm:n", str(U64_MAX).encode())
    s.eq("incr wraps at 2^64", c.incr("pm:n", 1), 0)
    c.set("pm:n", b"0")
    s.eq("incr by 2^64-1", c.incr("pm:n", U64_MAX), U64_MAX)
    s.eq("get 2^64-1", c.get("pm:n"), str(U64_MAX).encode())
    s.eq("decr by 2^64-1", c.decr("pm:n", U64_MAX), 0)
    c.set("pm:n", b"abc")
    s.raises("incr non-numeric is CLIENT_ERROR", MemcacheClientError, c.incr, "pm:n", 1)
    s.raises("decr non-numeric is CLIENT_ERROR", MemcacheClientError, c.decr, "pm:n", 1)
    s.eq("non-numeric value unchanged", c.get("pm:n"), b"abc")
    c.set("pm:n", b"5", noreply=False)
    s.eq("incr noreply returns None", c.incr("pm:n", 2, noreply=True), None)
    s.eq("incr noreply lands", c.get("pm:n"), b"7")
    v, cas1 = c.gets("pm:n")
    c.incr("pm:n", 1)
    v, cas2 = c.gets("pm:n")
    s.check("incr changes cas", cas1 != cas2, f"{cas1!r} then {cas2!r}")
    c.close()


def pm_concurrent_incr(s, addr):
    threads, per_thread = 4, 250
    c = pm_client(addr, default_noreply=False)
    c.set("pm:counter", b"0")
    errors = []

    def worker():
        w = pm_client(addr, default_noreply=False)
        try:
            for _ in range(per_thread):
                w.incr("pm:counter", 1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            w.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    s.eq("concurrent incr threads finished", [t.is_alive() for t in ts], [False] * threads)
    s.eq("concurrent incr errors", errors, [])
    s.eq("concurrent incr total", int(c.get("pm:counter")), threads * per_thread)
    c.close()


def pm_expiry_and_touch(s, addr):
    c = pm_client(addr, default_noreply=False)
    now = int(time.time())
    s.eq("set expire=1", c.set("pm:e1", b"short", expire=1), True)
    s.eq("set expire=3", c.set("pm:e3", b"3s", expire=3), True)
    s.eq("expire=3 readable at once", c.get("pm:e3"), b"3s")
    c.set("pm:e0", b"forever", expire=0)
    c.set("pm:e100", b"100s", expire=100)
    c.set("pm:eabs", b"absolute", expire=now + 100)
    s.eq("absolute expiry in the future readable", c.get("pm:eabs"), b"absolute")
    s.eq("set absolute expiry in the past", c.set("pm:epast", b"x", expire=now - 100), True)
    s.eq("absolute expiry in the past is gone at once", c.get("pm:epast"), None)
    s.eq("set negative expiry", c.set("pm:eneg", b"x", expire=-1), True)
    s.eq("negative expiry is gone at once", c.get("pm:eneg"), None)
    c.set("pm:t1", b"touched short", expire=0)
    s.eq("touch to 1 s", c.touch("pm:t1", 1), True)
    # 2 s, not 1: a 1 s item may already be gone when the touch arrives (the clock ticks once a
    # second); a 2 s item lives at least 1 s, and is surely gone after EXPIRY_WAIT untouched.
    c.set("pm:t2", b"touched forever", expire=2)
    s.eq("touch to no expiry", c.touch("pm:t2", 0), True)
    s.eq("touch missing", c.touch("pm:t-missing", 1), False)
    s.eq("touch keeps the value", c.get("pm:t2"), b"touched forever")
    time.sleep(EXPIRY_WAIT)
    s.eq("expire=1 gone after 2.2 s", c.get("pm:e1"), None)
    s.eq("touched to 1 s gone after 2.2 s", c.get("pm:t1"), None)
    s.eq("touched to no expiry still there", c.get("pm:t2"), b"touched forever")
    s.eq("expire=0 still there", c.get("pm:e0"), b"forever")
    s.eq("expire=100 still there", c.get("pm:e100"), b"100s")
    s.eq("absolute expiry still there", c.get("pm:eabs"), b"absolute")
    s.eq("expired key cannot be touched", c.touch("pm:e1", 10), False)
    s.eq("add over an expired key", c.add("pm:e1", b"new"), True)
    s.eq("get added over expired", c.get("pm:e1"), b"new")
    s.eq("incr on expired key", c.incr("pm:t1", 1), None)
    c.close()


def pm_flags_and_serde(s, addr):
    p = pm_client(addr, default_noreply=False, serde=serde.pickle_serde)
    obj = {"a": [1, 2, 3], "b": "text", "c": (4.5, None)}
    s.eq("pickle_serde set int", p.set("pm:int", 42), True)
    s.eq("pickle_serde get int", p.get("pm:int"), 42)
    s.eq("pickle_serde set big int", p.set("pm:bigint", 2**70), True)
    s.eq("pickle_serde get big int", p.get("pm:bigint"), 2**70)
    s.eq("pickle_serde set dict", p.set("pm:dict", obj), True)
    s.eq("pickle_serde get dict", p.get("pm:dict"), obj)
    s.eq("pickle_serde set str", p.set("pm:text", "t\u00eaxt"), True)
    s.eq("pickle_serde get str", p.get("pm:text"), "t\u00eaxt")
    s.eq("pickle_serde set bytes", p.set("pm:raw", b"raw"), True)
    s.eq("pickle_serde get bytes", p.get("pm:raw"), b"raw")
    s.eq("pickle_serde get_many", p.get_many(["pm:int", "pm:dict"]), {"pm:int": 42, "pm:dict": obj})
    fs = FlagsSerde()
    f = pm_client(addr, default_noreply=False, serde=fs)
    f.get_many(["pm:int", "pm:dict", "pm:text", "pm:raw"])
    want = {"pm:int": serde.FLAG_INTEGER, "pm:dict": serde.FLAG_PICKLE}
    want.update({"pm:text": serde.FLAG_TEXT, "pm:raw": serde.FLAG_BYTES})
    s.eq("pickle_serde flags on the wire", fs.flags, want)
    s.eq("raw int value", f.get("pm:int"), b"42")
    for flags in (0, 1, 12345, 2**31, 2**32 - 1):
        s.eq(f"set flags={flags}", f.set("pm:flags", b"v", flags=flags), True)
        f.get("pm:flags")
        s.eq(f"flags={flags} read back", fs.flags.get("pm:flags"), flags)
    f.set("pm:flags", b"v", flags=5)
    f.append("pm:flags", b"w", flags=9)
    f.prepend("pm:flags", b"u", flags=9)
    s.eq("append/prepend value", f.get("pm:flags"), b"uvw")
    s.eq("append/prepend keep the item's flags", fs.flags.get("pm:flags"), 5)
    f.set("pm:flags", b"10", flags=7)
    f.incr("pm:flags", 1)
    s.eq("incr value", f.get("pm:flags"), b"11")
    s.eq("incr keeps the item's flags", fs.flags.get("pm:flags"), 7)
    f.gets("pm:flags")
    s.eq("gets reads flags too", fs.flags.get("pm:flags"), 7)
    p.close()
    f.close()


def pm_large(s, addr):
    c = pm_client(addr, default_noreply=False)
    big = bytes(i % 251 for i in range(LARGE_OK))
    s.eq("set 1000 KiB value", c.set("pm:large", big), True)
    s.eq("get 1000 KiB value", c.get("pm:large"), big)
    s.eq("append to 1000 KiB value", c.append("pm:large", b"tail"), True)
    s.eq("get appended 1000 KiB value", c.get("pm:large"), big + b"tail")
    huge = b"x" * LARGE_TOO_BIG
    e = s.raises("set 2 MiB value is SERVER_ERROR", MemcacheServerError, c.set, "pm:huge", huge)
    if e is not None:
        s.check("SERVER_ERROR says too large", b"too large" in str(e).encode(), f"error {e}")
    s.eq("2 MiB value not stored", c.get("pm:huge"), None)
    s.eq("connection works after 2 MiB", c.get("pm:large"), big + b"tail")
    # With noreply the server sends nothing back: the same connection must go on past the value.
    c.set("pm:huge", b"small")
    sock = c.sock
    s.eq("set 2 MiB noreply", c.set("pm:huge", huge, noreply=True), True)
    s.eq("failed set removes the old value", c.get("pm:huge"), None)
    s.check("same connection after 2 MiB noreply", c.sock is sock and sock is not None)
    s.eq("set after 2 MiB noreply", c.set("pm:after", b"ok"), True)
    s.eq("get after 2 MiB noreply", c.get("pm:after"), b"ok")
    c.close()


def pm_stats(s, addr):
    c = pm_client(addr, default_noreply=False)
    st = c.stats()
    for k in (b"pid", b"uptime", b"time", b"version", b"curr_connections",
              b"total_connections", b"cmd_get", b"cmd_set", b"get_hits", b"get_misses",
              b"curr_items", b"total_items", b"bytes"):
        s.check(f"stats has {k.decode()}", k in st, f"keys {sorted(st)}")
    s.check("stats values are numbers", isinstance(st.get(b"curr_items"), int), short(st))
    s.eq("stats version equals version", st.get(b"version"), c.version())
    c.set_many({"pm:s1": b"1", "pm:s2": b"2", "pm:s3": b"3"})
    before = c.stats()
    c.get_many(["pm:s1", "pm:s2", "pm:s3", "pm:s-missing1", "pm:s-missing2"])
    c.get("pm:s1")
    after = c.stats()

    def delta(k):
        return after.get(k, 0) - before.get(k, 0)

    s.eq("get_hits counts each key found", delta(b"get_hits"), 4)
    s.eq("get_misses counts each key not found", delta(b"get_misses"), 2)
    s.eq("cmd_get counts each key", delta(b"cmd_get"), 6)
    before = c.stats()
    c.set("pm:s4", b"4")
    c.set("pm:s4", b"5")
    c.add("pm:s4", b"6")
    after = c.stats()
    s.eq("cmd_set counts each storage command", delta(b"cmd_set"), 3)
    s.check("curr_items counts live items", after.get(b"curr_items", 0) >= 4, short(after))
    before = c.stats()
    c.touch("pm:s1", 100)
    c.touch("pm:s-missing1", 100)
    after = c.stats()
    s.eq("cmd_touch counts each touch", delta(b"cmd_touch"), 2)
    settings = c.stats("settings")
    s.eq("stats settings item_size_max", settings.get(b"item_size_max"), 1024 * 1024)
    s.eq("stats settings cas_enabled", settings.get(b"cas_enabled"), b"yes")
    c.close()


def pm_noreply(s, addr):
    c = pm_client(addr)  # default_noreply=True, pymemcache's default
    s.eq("set noreply returns True", c.set("pm:nr", b"v1"), True)
    c.set("pm:nr", b"v2")
    s.eq("noreply sets land in order", c.get("pm:nr"), b"v2")
    s.eq("add noreply returns True", c.add("pm:nr", b"v3"), True)
    s.eq("add noreply on existing stores nothing", c.get("pm:nr"), b"v2")
    c.add("pm:nr-new", b"added")
    s.eq("add noreply lands", c.get("pm:nr-new"), b"added")
    c.replace("pm:nr", b"v4")
    c.append("pm:nr", b"-a")
    c.prepend("pm:nr", b"p-")
    s.eq("replace/append/prepend noreply land", c.get("pm:nr"), b"p-v4-a")
    c.replace("pm:nr-missing", b"x")
    c.append("pm:nr-missing", b"x")
    s.eq("replace/append noreply on missing store nothing", c.get("pm:nr-missing"), None)
    s.eq("delete noreply returns True", c.delete("pm:nr-new"), True)
    s.eq("delete noreply lands", c.get("pm:nr-new"), None)
    s.eq("delete noreply of missing returns True", c.delete("pm:nr-new"), True)
    c.set("pm:nr-n", b"1")
    c.incr("pm:nr-n", 41, noreply=True)
    c.decr("pm:nr-n", 2, noreply=True)
    s.eq("incr/decr noreply land", c.get("pm:nr-n"), b"40")
    c.set("pm:nr-t", b"t", expire=2)
    c.touch("pm:nr-t", 0)
    v, cas = c.gets("pm:nr")
    s.eq("cas noreply returns True", c.cas("pm:nr", b"cas", cas, noreply=True), True)
    s.eq("cas noreply lands", c.get("pm:nr"), b"cas")
    c.cas("pm:nr", b"stale", cas, noreply=True)
    s.eq("stale cas noreply stores nothing", c.get("pm:nr"), b"cas")
    values = {f"pm:nr-m{i}": str(i).encode() for i in range(100)}
    s.eq("set_many noreply returns no failures", c.set_many(values), [])
    s.eq("set_many noreply lands", c.get_many(list(values)), values)
    for k in values:
        c.set(k, b"again-" + values[k])
    s.eq("100 pipelined noreply sets land", c.get_many(list(values)),
         {k: b"again-" + v for k, v in values.items()})
    s.eq("delete_many noreply", c.delete_many(list(values)), True)
    s.eq("delete_many noreply lands", c.get_many(list(values)), {})
    time.sleep(EXPIRY_WAIT)
    s.eq("touch noreply lands", c.get("pm:nr-t"), b"t")
    s.eq("flush_all noreply returns True", c.flush_all(), True)
    s.eq("flush_all noreply lands", c.get_many(["pm:nr", "pm:nr-n", "pm:nr-t"]), {})
    c.close()


def pm_many_keys(s, addr):
    c = pm_client(addr, default_noreply=False)
    values = {f"pm:many:{i:05d}": f"v{i}-{'x' * (i % 50)}".encode() for i in range(MANY_KEYS)}
    s.eq(f"set_many {MANY_KEYS} keys", c.set_many(values), [])
    s.eq(f"get_many {MANY_KEYS} keys", c.get_many(list(values)), values)
    some = list(values)[::97]
    s.eq("get_many a sample", c.get_many(some), {k: values[k] for k in some})
    s.eq("get one of many", c.get("pm:many:01999"), values["pm:many:01999"])
    s.eq(f"delete_many {MANY_KEYS} keys", c.delete_many(list(values)), True)
    s.eq(f"get_many {MANY_KEYS} deleted keys", c.get_many(list(values)), {})
    c.close()


def pm_binary(s, addr):
    c = pm_client(addr, default_noreply=False)
    s.eq("set all 256 byte values", c.set("pm:bin", BINARY), True)
    s.eq("get all 256 byte values", c.get("pm:bin"), BINARY)
    tricky = {
        "pm:bin-crlf": b"\r\n",
        "pm:bin-end": b"\r\nEND\r\n",
        "pm:bin-value": b"VALUE pm:bin 0 3\r\nabc\r\nEND\r\n",
        "pm:bin-nul": b"\x00" * 100,
        "pm:bin-rev": BINARY[::-1] * 4,
    }
    s.eq("set_many binary values", c.set_many(tricky), [])
    s.eq("get_many binary values", c.get_many(list(tricky)), tricky)
    v, cas = c.gets("pm:bin")
    s.eq("gets binary value", v, BINARY)
    s.eq("cas binary value", c.cas("pm:bin", BINARY[::-1], cas), True)
    s.eq("get cas'd binary value", c.get("pm:bin"), BINARY[::-1])
    c.close()


def pm_flush_all(s, addr):
    c = pm_client(addr, default_noreply=False)
    c.set_many({"pm:f1": b"1", "pm:f2": b"2"})
    s.eq("flush_all", c.flush_all(noreply=False), True)
    s.eq("flush_all removed everything", c.get_many(["pm:f1", "pm:f2"]), {})
    s.eq("add after flush_all", c.add("pm:f1", b"new"), True)
    s.eq("set right after flush_all lands", c.get("pm:f1"), b"new")
    s.eq("flush_all delay=0", c.flush_all(delay=0, noreply=False), True)
    s.eq("flush_all delay=0 removed everything", c.get("pm:f1"), None)
    c.close()


def run_pymemcache(addr):
    s = Suite("pymemcache")
    for section in (pm_basic, pm_multi, pm_store_commands, pm_cas, pm_delete, pm_incr_decr,
                    pm_concurrent_incr, pm_expiry_and_touch, pm_flags_and_serde, pm_large,
                    pm_stats, pm_noreply, pm_many_keys, pm_binary, pm_flush_all):
        s.run(section, addr)
    return s


# ----------------------------------------------------------------------------------------------
# python-memcached
# ----------------------------------------------------------------------------------------------


class Point:
    """A user class, pickled by python-memcached."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __repr__(self):
        return f"Point({self.x}, {self.y})"


# Connections python-memcached gave up on. It hides I/O and protocol errors (a call returns None,
# 0 or {} and the server is "marked dead"), so a check that wants None could pass by accident:
# every section therefore also checks that no connection failed.
DEAD = []


def watch_dead_connections():
    mark_dead = memcache._Host.mark_dead

    def recording_mark_dead(host, reason):
        DEAD.append(f"{host}: {reason}")
        mark_dead(host, reason)

    memcache._Host.mark_dead = recording_mark_dead


def py_client(addr, **kw):
    # dead_retry=0: a failed call must not make the next ones skip the server for 30 s.
    kw.setdefault("socket_timeout", IO_TIMEOUT)
    kw.setdefault("dead_retry", 0)
    server = f"unix:{addr}" if isinstance(addr, str) else f"{addr[0]}:{addr[1]}"
    return memcache.Client([server], **kw)


def truthy(v):
    return bool(v)


def py_basic(s, addr):
    mc = py_client(addr)
    s.eq("set str", truthy(mc.set("py:str", "hello")), True)
    s.eq("get str", mc.get("py:str"), "hello")
    s.eq("set bytes", truthy(mc.set("py:bytes", b"\x00\x01abc")), True)
    s.eq("get bytes", mc.get("py:bytes"), b"\x00\x01abc")
    s.eq("set int", truthy(mc.set("py:int", 42)), True)
    s.eq("get int", mc.get("py:int"), 42)
    s.eq("set unicode str", truthy(mc.set("py:uni", "h\u00e9llo \u2713")), True)
    s.eq("get unicode str", mc.get("py:uni"), "h\u00e9llo \u2713")
    s.eq("set empty str", truthy(mc.set("py:empty", "")), True)
    s.eq("get empty str", mc.get("py:empty"), "")
    s.eq("set empty bytes", truthy(mc.set("py:empty-b", b"")), True)
    s.eq("get empty bytes", mc.get("py:empty-b"), b"")
    s.eq("overwrite", truthy(mc.set("py:str", "world")), True)
    s.eq("get overwritten", mc.get("py:str"), "world")
    s.eq("get missing", mc.get("py:missing"), None)
    s.eq("get missing with default", mc.get("py:missing", "dflt"), "dflt")
    ukey = "py:\u043a\u043b\u044e\u0447-\u00fc"
    s.eq("set UTF-8 key", truthy(mc.set(ukey, "unicode key")), True)
    s.eq("get UTF-8 key", mc.get(ukey), "unicode key")
    s.eq("get_multi UTF-8 key", mc.get_multi([ukey]), {ukey: "unicode key"})
    long_key = "py:" + "k" * 247
    s.eq("set 250-byte key", truthy(mc.set(long_key, "long")), True)
    s.eq("get 250-byte key", mc.get(long_key), "long")
    key_len_error = memcache.Client.MemcachedKeyLengthError
    key_char_error = memcache.Client.MemcachedKeyCharacterError
    s.raises("251-byte key refused", key_len_error, mc.set, long_key + "k", "x")
    s.raises("key with a space refused", key_char_error, mc.set, "py:a b", "x")
    s.raises("key with a control character refused", key_char_error, mc.get, "py:a\x01")
    s.raises("empty key refused", memcache.Client.MemcachedKeyError, mc.get, "")
    s.eq("set with a timedelta", truthy(mc.set("py:td", "td", time=timedelta(seconds=100))), True)
    s.eq("get set with a timedelta", mc.get("py:td"), "td")
    mc.disconnect_all()
    s.eq("get after disconnect reconnects", mc.get("py:str"), "world")
    mc.disconnect_all()


def py_multi(s, addr):
    mc = py_client(addr)
    values = {f"py:m{i}": f"value-{i}" for i in range(5)}
    values["py:m-int"] = 7
    values["py:m-bytes"] = b"raw"
    s.eq("set_multi", mc.set_multi(values), [])
    s.eq("get_multi", mc.get_multi(list(values) + ["py:m-missing"]), values)
    s.eq("get_multi of missing", mc.get_multi(["py:m-missing", "py:m-missing2"]), {})
    s.eq("set_multi with key_prefix", mc.set_multi({"a": 1, "b": "two"}, key_prefix="py:pfx:"), [])
    s.eq("get_multi with key_prefix", mc.get_multi(["a", "b", "c"], key_prefix="py:pfx:"),
         {"a": 1, "b": "two"})
    s.eq("prefixed keys are plain keys", mc.get("py:pfx:a"), 1)
    numbered = {42: "forty-two", 46: "forty-six"}
    s.eq("set_multi int keys", mc.set_multi(numbered, key_prefix="py:num:"), [])
    s.eq("get_multi int keys", mc.get_multi([46, 42], key_prefix="py:num:"), numbered)
    mc.disconnect_all()


def py_store_commands(s, addr):
    mc = py_client(addr)
    mc.delete("py:add")
    s.eq("add new", truthy(mc.add("py:add", "first")), True)
    s.eq("add existing", truthy(mc.add("py:add", "second")), False)
    s.eq("add existing keeps value", mc.get("py:add"), "first")
    s.eq("replace missing", truthy(mc.replace("py:rep-missing", "x")), False)
    s.eq("replace missing stores nothing", mc.get("py:rep-missing"), None)
    s.eq("replace existing", truthy(mc.replace("py:add", "replaced")), True)
    s.eq("get replaced", mc.get("py:add"), "replaced")
    s.eq("append", truthy(mc.append("py:add", "-tail")), True)
    s.eq("prepend", truthy(mc.prepend("py:add", "head-")), True)
    s.eq("get appended and prepended", mc.get("py:add"), "head-replaced-tail")
    s.eq("append missing", truthy(mc.append("py:app-missing", "x")), False)
    s.eq("prepend missing", truthy(mc.prepend("py:app-missing", "x")), False)
    s.eq("append/prepend missing store nothing", mc.get("py:app-missing"), None)
    mc.set("py:app-int", 12)
    mc.append("py:app-int", "34")
    s.eq("append keeps the int flag", mc.get("py:app-int"), 1234)
    mc.disconnect_all()


def py_cas(s, addr):
    mc = py_client(addr, cache_cas=True)
    other = py_client(addr)
    mc.delete("py:cas")
    s.eq("gets missing", mc.gets("py:cas"), None)
    mc.set("py:cas", "v1")
    s.eq("gets value", mc.gets("py:cas"), "v1")
    s.check("gets cached a cas id", b"py:cas" in mc.cas_ids, f"cas_ids {mc.cas_ids}")
    s.eq("cas with current token", truthy(mc.cas("py:cas", "v2")), True)
    s.eq("get after cas", mc.get("py:cas"), "v2")
    s.eq("cas with stale token is EXISTS", truthy(mc.cas("py:cas", "v3")), False)
    s.eq("stale cas keeps value", mc.get("py:cas"), "v2")
    s.eq("gets again", mc.gets("py:cas"), "v2")
    other.set("py:cas", "changed by another client")
    s.eq("cas after another client's set", truthy(mc.cas("py:cas", "mine")), False)
    s.eq("other client's value kept", mc.get("py:cas"), "changed by another client")
    mc.gets("py:cas")
    other.delete("py:cas")
    s.eq("cas after delete is NOT_FOUND", truthy(mc.cas("py:cas", "mine")), False)
    s.eq("cas after delete stores nothing", mc.get("py:cas"), None)
    mc.reset_cas()
    s.eq("cas without gets is a set", truthy(mc.cas("py:cas", "plain")), True)
    s.eq("get after cas without gets", mc.get("py:cas"), "plain")
    mc.disconnect_all()
    other.disconnect_all()


def py_delete(s, addr):
    mc = py_client(addr)
    mc.set_multi({"py:d1": 1, "py:d2": 2, "py:d3": 3})
    s.eq("delete existing", truthy(mc.delete("py:d1")), True)
    s.eq("deleted key is gone", mc.get("py:d1"), None)
    s.eq("delete missing", truthy(mc.delete("py:d1")), False)
    s.eq("delete_multi", truthy(mc.delete_multi(["py:d2", "py:d3", "py:d-missing"])), True)
    s.eq("delete_multi removed all", mc.get_multi(["py:d2", "py:d3"]), {})
    s.eq("connection in step after delete_multi", mc.get("py:missing"), None)
    mc.set("py:d4", "x")
    s.eq("delete noreply", truthy(mc.delete("py:d4", noreply=True)), True)
    s.eq("delete noreply lands", mc.get("py:d4"), None)
    mc.disconnect_all()


def py_incr_decr(s, addr):
    mc = py_client(addr)
    mc.set("py:n", 10)
    s.eq("incr default delta", mc.incr("py:n"), 11)
    s.eq("incr", mc.incr("py:n", 4), 15)
    s.eq("decr", mc.decr("py:n", 3), 12)
    s.eq("get after incr/decr", mc.get("py:n"), 12)
    s.eq("decr floors at 0", mc.decr("py:n", 100), 0)
    s.eq("get after decr floor", mc.get("py:n"), 0)
    s.eq("incr after decr floor", mc.incr("py:n", 9), 9)
    mc.set("py:n", "999")
    s.eq("incr str number", mc.incr("py:n"), 1000)
    s.eq("get longer number keeps the text flag", mc.get("py:n"), "1000")
    s.eq("incr missing", mc.incr("py:n-missing"), None)
    s.eq("decr missing", mc.decr("py:n-missing"), None)
    s.eq("incr missing creates nothing", mc.get("py:n-missing"), None)
    mc.set("py:n", U64_MAX)
    s.eq("get 2^64-1", mc.get("py:n"), U64_MAX)
    s.eq("incr wraps at 2^64", mc.incr("py:n", 2), 1)
    mc.set("py:n", "abc")
    s.raises("incr non-numeric (CLIENT_ERROR) raises", ValueError, mc.incr, "py:n")
    s.eq("connection in step after CLIENT_ERROR", mc.get("py:n"), "abc")
    mc.set("py:n", 5)
    s.eq("incr noreply returns None", mc.incr("py:n", 2, noreply=True), None)
    s.eq("decr noreply returns None", mc.decr("py:n", 1, noreply=True), None)
    s.eq("incr/decr noreply land", mc.get("py:n"), 6)
    mc.disconnect_all()


def py_expiry_and_touch(s, addr):
    mc = py_client(addr)
    s.eq("set time=1", truthy(mc.set("py:e1", "short", time=1)), True)
    s.eq("set time=3", truthy(mc.set("py:e3", "3s", time=3)), True)
    s.eq("time=3 readable at once", mc.get("py:e3"), "3s")
    mc.set("py:e0", "forever")
    s.eq("set_multi time=1", mc.set_multi({"py:em1": 1, "py:em2": 2}, time=1), [])
    mc.set("py:t1", "touched short")
    s.eq("touch to 1 s", truthy(mc.touch("py:t1", 1)), True)
    mc.set("py:t2", "touched forever", time=2)  # 2 s: see pm_expiry_and_touch
    s.eq("touch to no expiry", truthy(mc.touch("py:t2", 0)), True)
    mc.set("py:t3", "touched noreply", time=2)
    s.eq("touch noreply", truthy(mc.touch("py:t3", 100, noreply=True)), True)
    s.eq("touch missing", truthy(mc.touch("py:t-missing", 1)), False)
    time.sleep(EXPIRY_WAIT)
    s.eq("time=1 gone after 2.2 s", mc.get("py:e1"), None)
    s.eq("set_multi time=1 gone after 2.2 s", mc.get_multi(["py:em1", "py:em2"]), {})
    s.eq("touched to 1 s gone after 2.2 s", mc.get("py:t1"), None)
    s.eq("touched to no expiry still there", mc.get("py:t2"), "touched forever")
    s.eq("touched with noreply still there", mc.get("py:t3"), "touched noreply")
    s.eq("no expiry still there", mc.get("py:e0"), "forever")
    s.eq("replace of an expired key", truthy(mc.replace("py:e1", "x")), False)
    s.eq("add over an expired key", truthy(mc.add("py:e1", "new")), True)
    s.eq("get added over expired", mc.get("py:e1"), "new")
    mc.disconnect_all()


def py_pickling(s, addr):
    mc = py_client(addr)
    obj = {"a": [1, 2, 3], "b": "text", "c": (4.5, None), "d": {1, 2}}
    for name, value in (("dict", obj), ("list", [1, "two", b"three"]), ("tuple", (1, 2)),
                        ("float", 2.5), ("bool", True), ("none", None), ("point", Point(3, 4)),
                        ("bigint", 2**70)):
        s.eq(f"set pickled {name}", truthy(mc.set(f"py:pk-{name}", value)), True)
        got = mc.get(f"py:pk-{name}", "absent")
        s.eq(f"get pickled {name}", got, value)
    mp = py_client(addr, pickleProtocol=pickle.HIGHEST_PROTOCOL)
    s.eq("set with the highest pickle protocol", truthy(mp.set("py:pk-hi", obj)), True)
    s.eq("get with the highest pickle protocol", mc.get("py:pk-hi"), obj)
    s.eq("set compressed", truthy(mc.set("py:zip", "z" * 10000, min_compress_len=100)), True)
    s.eq("get compressed", mc.get("py:zip"), "z" * 10000)
    fs = FlagsSerde()
    raw = pm_client(addr, default_noreply=False, serde=fs)
    mc.set("py:fl-int", 5)
    mc.set("py:fl-bytes", b"b")
    mc.set("py:fl-str", "s")
    raw.get_many(["py:fl-int", "py:fl-bytes", "py:fl-str", "py:pk-dict", "py:zip"])
    want = {"py:fl-int": 2, "py:fl-bytes": 0, "py:fl-str": 16, "py:pk-dict": 1, "py:zip": 16 | 8}
    s.eq("flags on the wire", {k: fs.flags.get(k) for k in want}, want)
    s.eq("compressed value is smaller on the server", len(raw.get("py:zip")) < 1000, True)
    raw.close()
    mc.disconnect_all()
    mp.disconnect_all()


def py_large(s, addr):
    mc = py_client(addr)
    big = bytes(i % 251 for i in range(LARGE_OK))
    s.eq("set 1000 KiB value", truthy(mc.set("py:large", big)), True)
    s.eq("get 1000 KiB value", mc.get("py:large"), big)
    huge = b"x" * LARGE_TOO_BIG
    s.eq("2 MiB value refused by the client", truthy(mc.set("py:huge", huge)), False)
    # Without the client's own limit the value goes to the server, which refuses it.
    unl = py_client(addr, server_max_value_length=0)
    unl.set("py:huge", "small")
    sock = unl.servers[0].socket
    s.eq("set 2 MiB value is refused by the server", truthy(unl.set("py:huge", huge)), False)
    s.eq("failed set removes the old value", unl.get("py:huge"), None)
    s.check("same connection after 2 MiB", unl.servers[0].socket is sock and sock is not None)
    s.eq("connection works after 2 MiB", unl.get("py:large"), big)
    s.eq("set_multi with a 2 MiB value",
         unl.set_multi({"py:h1": "a", "py:h2": huge, "py:h3": "c"}), ["py:h2"])
    s.eq("set_multi stores the others", unl.get_multi(["py:h1", "py:h2", "py:h3"]),
         {"py:h1": "a", "py:h3": "c"})
    s.eq("set 2 MiB noreply", truthy(unl.set("py:huge", huge, noreply=True)), True)
    s.eq("get after 2 MiB noreply", unl.get("py:large"), big)
    s.check("same connection after 2 MiB noreply", unl.servers[0].socket is sock)
    mc.disconnect_all()
    unl.disconnect_all()


def py_stats(s, addr):
    mc = py_client(addr)
    stats = mc.get_stats()
    s.eq("get_stats has one server", len(stats), 1)
    name, st = stats[0] if stats else ("", {})
    named = addr if isinstance(addr, str) else f":{addr[1]}"
    s.check("get_stats names the server", named in name, f"name {name!r}")
    for k in ("pid", "uptime", "version", "curr_items", "total_items", "get_hits", "get_misses",
              "cmd_get", "cmd_set", "curr_connections"):
        s.check(f"stats has {k}", k in st, f"keys {sorted(st)}")
    s.check("curr_items is a number", st.get("curr_items", "").isdigit(), short(st))
    s.check("version looks like x.y.z", bool(re.match(r"^\d+\.\d+\.\d+", st.get("version", ""))),
            short(st.get("version")))
    mc.set("py:st", "x")
    before = mc.get_stats()[0][1]
    mc.get("py:st")
    mc.get("py:st-missing")
    mc.get_multi(["py:st", "py:st-missing"])
    after = mc.get_stats()[0][1]
    for k, want in (("get_hits", 2), ("get_misses", 2), ("cmd_get", 4)):
        s.eq(f"{k} delta", int(after.get(k, 0)) - int(before.get(k, 0)), want)
    settings = mc.get_stats("settings")
    s.eq("stats settings item_size_max", settings[0][1].get("item_size_max") if settings else None,
         str(1024 * 1024))
    mc.disconnect_all()


def py_noreply(s, addr):
    mc = py_client(addr)
    s.eq("set noreply", truthy(mc.set("py:nr", "v1", noreply=True)), True)
    mc.set("py:nr", "v2", noreply=True)
    s.eq("noreply sets land in order", mc.get("py:nr"), "v2")
    s.eq("add noreply", truthy(mc.add("py:nr", "v3", noreply=True)), True)
    s.eq("add noreply on existing stores nothing", mc.get("py:nr"), "v2")
    mc.replace("py:nr", "v4", noreply=True)
    mc.append("py:nr", "-a", noreply=True)
    mc.prepend("py:nr", "p-", noreply=True)
    s.eq("replace/append/prepend noreply land", mc.get("py:nr"), "p-v4-a")
    values = {f"py:nr-m{i}": i for i in range(100)}
    s.eq("set_multi noreply", mc.set_multi(values, noreply=True), [])
    s.eq("set_multi noreply lands", mc.get_multi(list(values)), values)
    s.eq("delete_multi noreply", truthy(mc.delete_multi(list(values), noreply=True)), True)
    s.eq("delete_multi noreply lands", mc.get_multi(list(values)), {})
    mc.disconnect_all()


def py_many_keys(s, addr):
    mc = py_client(addr)
    values = {f"py:many:{i:05d}": f"v{i}-{'x' * (i % 50)}" for i in range(MANY_KEYS)}
    s.eq(f"set_multi {MANY_KEYS} keys", mc.set_multi(values), [])
    s.eq(f"get_multi {MANY_KEYS} keys", mc.get_multi(list(values)), values)
    s.eq("get one of many", mc.get("py:many:00000"), values["py:many:00000"])
    s.eq(f"delete_multi {MANY_KEYS} keys", truthy(mc.delete_multi(list(values))), True)
    s.eq(f"get_multi {MANY_KEYS} deleted keys", mc.get_multi(list(values)), {})
    s.eq("connection in step after many keys", mc.get("py:missing"), None)
    mc.disconnect_all()


def py_binary(s, addr):
    mc = py_client(addr)
    s.eq("set all 256 byte values", truthy(mc.set("py:bin", BINARY)), True)
    s.eq("get all 256 byte values", mc.get("py:bin"), BINARY)
    tricky = {"py:bin-crlf": b"\r\n", "py:bin-end": b"\r\nEND\r\n", "py:bin-nul": b"\x00" * 100,
              "py:bin-rev": BINARY[::-1] * 4, "py:bin-text": "line1\r\nEND\r\nline3"}
    s.eq("set_multi binary values", mc.set_multi(tricky), [])
    s.eq("get_multi binary values", mc.get_multi(list(tricky)), tricky)
    mc.disconnect_all()


def py_flush_all(s, addr):
    mc = py_client(addr)
    mc.set_multi({"py:f1": 1, "py:f2": 2})
    mc.flush_all()
    s.eq("flush_all removed everything", mc.get_multi(["py:f1", "py:f2"]), {})
    s.eq("add after flush_all", truthy(mc.add("py:f1", "new")), True)
    s.eq("set right after flush_all lands", mc.get("py:f1"), "new")
    mc.disconnect_all()


def py_interop(s, addr):
    """What one client writes, the other reads: both use python-memcached's flags."""
    mc = py_client(addr, cache_cas=True)
    p = pm_client(addr, default_noreply=False, serde=serde.pickle_serde)
    obj = {"k": [1, 2], "t": "x"}
    p.set_many({"py:io-int": 7, "py:io-str": "s\u00e9", "py:io-obj": obj, "py:io-bytes": b"b"})
    s.eq("python-memcached reads pymemcache's values",
         mc.get_multi(["py:io-int", "py:io-str", "py:io-obj", "py:io-bytes"]),
         {"py:io-int": 7, "py:io-str": "s\u00e9", "py:io-obj": obj, "py:io-bytes": b"b"})
    mc.set_multi({"py:io-int": 8, "py:io-str": "t\u00e9", "py:io-obj": [obj], "py:io-bytes": b"c"})
    s.eq("pymemcache reads python-memcached's values",
         p.get_many(["py:io-int", "py:io-str", "py:io-obj", "py:io-bytes"]),
         {"py:io-int": 8, "py:io-str": "t\u00e9", "py:io-obj": [obj], "py:io-bytes": b"c"})
    mc.gets("py:io-int")
    v, cas = p.gets("py:io-int")
    s.eq("both clients see the same cas", mc.cas_ids.get(b"py:io-int"), int(cas) if cas else None)
    s.eq("pymemcache cas with the shared token", p.cas("py:io-int", 9, cas), True)
    s.eq("python-memcached cas with the now stale token", truthy(mc.cas("py:io-int", 10)), False)
    s.eq("value after interleaved cas", mc.get("py:io-int"), 9)
    p.close()
    mc.disconnect_all()


def run_python_memcached(addr):
    s = Suite("python-memcached")
    watch_dead_connections()
    for section in (py_basic, py_multi, py_store_commands, py_cas, py_delete, py_incr_decr,
                    py_expiry_and_touch, py_pickling, py_large, py_stats, py_noreply,
                    py_many_keys, py_binary, py_interop, py_flush_all):
        seen = len(DEAD)
        s.run(section, addr)
        s.eq("no connection failed", DEAD[seen:], [])
    return s


def wait_listening(addr, within):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if isinstance(addr, str):
                with socket.socket(socket.AF_UNIX) as u:
                    u.settimeout(1)
                    u.connect(addr)
            else:
                socket.create_connection(addr, timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int)
    where.add_argument("--socket", help="a Unix socket path instead of --host/--port")
    args = ap.parse_args()
    # pymemcache takes a socket path as its server, python-memcached "unix:PATH".
    addr = args.socket if args.socket else (args.host, args.port)

    def on_alarm(signum, frame):
        print(f"memcache_clients.py: gave up after {OVERALL_TIMEOUT} s", file=sys.stderr)
        traceback.print_stack(frame, file=sys.stderr)
        sys.exit(3)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(OVERALL_TIMEOUT)
    if not wait_listening(addr, 10):
        print(f"memcache_clients.py: nothing listens at {addr}", file=sys.stderr)
        return 2
    pm_client(addr, default_noreply=False).flush_all(noreply=False)

    suites = [run_pymemcache(addr), run_python_memcached(addr)]
    failed = 0
    for s in suites:
        for f in s.failures:
            print(f"MISMATCH {f}", file=sys.stderr)
        failed += len(s.failures)
    for s in suites:
        extra = f", {len(s.failures)} failed" if s.failures else ""
        print(f"{s.name}: {s.passed} checks passed{extra}", flush=True)
    if failed:
        print(f"memcache_clients.py: {failed} mismatches", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
