"""The real OpenStack CLI (python-openstackclient + python-troveclient) against k2hdkc-dbaas.

Usage: trove_cli.py ENDPOINT TOKEN

ENDPOINT is http://HOST:PORT/v1.0/PROJECT; TOKEN is the server's token:SECRET. Runs the whole
life of a cluster through `openstack database ...` (in-process, as `openstack` would run it),
with pymemcache as the data client at the instances' ip:11211, and prints one `STEP` line per
check, `IPS ...` with every address it saw, and `all trove checks passed` at the end. Any
failed check raises (non-zero exit).
"""

import contextlib
import io
import json
import os
import sys
import time

from openstackclient import shell
from pymemcache.client.base import Client

ENDPOINT, TOKEN = sys.argv[1], sys.argv[2]
for k in list(os.environ):
    if k.startswith("OS_"):
        del os.environ[k]
os.environ.update(OS_AUTH_TYPE="admin_token", OS_TOKEN=TOKEN, OS_ENDPOINT=ENDPOINT)

SEEN_IPS = set()
DEADLINE = 300  # seconds for any one wait


def osc(*args, ok=True):
    """Run `openstack ARGS`; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = shell.main(list(args))
        except SystemExit as e:
            rc = e.code
    rc = rc or 0
    if ok and rc != 0:
        raise AssertionError(f"openstack {' '.join(args)} failed ({rc}): {err.getvalue()} {out.getvalue()}")
    return rc, out.getvalue(), err.getvalue()


def osj(*args):
    return json.loads(osc(*args, "-f", "json")[1])


def step(msg):
    print("STEP", msg, flush=True)


def wait(what, f):
    t0 = time.time()
    last = None
    while time.time() - t0 < DEADLINE:
        last = f()
        if last is True:
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def cluster_ready(name, count):
    def f():
        c = osj("database", "cluster", "show", name)
        if c["task_name"] != "NONE":
            return c
        members = osj("database", "cluster", "list", "instances", name)
        if len(members) != count or any(m["Status"] != "ACTIVE" for m in members):
            return members
        return True
    wait(f"cluster {name} with {count} ACTIVE members", f)
    c = osj("database", "cluster", "show", name)
    ips = [x.strip() for x in c["ip"].split(",") if x.strip()]
    assert len(ips) == count, c
    SEEN_IPS.update(ips)
    return c, ips


def mc(ip):
    return Client((ip, 11211), connect_timeout=5, timeout=10)


def check_keys(ips, keys, what):
    for ip in ips:
        c = mc(ip)
        for k, v in keys.items():
            got = None
            for _ in range(20):  # a retry while a moved partition settles
                got = c.get(k)
                if got == v:
                    break
                time.sleep(0.2)
            assert got == v, f"{what}: {k} at {ip}:11211 is {got!r}, want {v!r}"
        c.close()


# Catalog.
ds = osj("datastore", "list")
assert any(d["Name"] == "k2hdkc" for d in ds), ds
versions = osj("datastore", "version", "list", "k2hdkc")
version = versions[0]["Name"]
shown = osj("datastore", "show", "k2hdkc")
assert shown["name"] == "k2hdkc", shown
flavors = osj("database", "flavor", "list")
assert any(str(f["ID"]) == "1" for f in flavors), flavors
step(f"catalog: datastore k2hdkc {version}, {len(flavors)} flavors")

# Errors are Trove faults the CLI prints.
rc, _, err = osc("database", "cluster", "show", "no-such-cluster", ok=False)
assert rc != 0 and ("could not be found" in err or "No cluster" in err), (rc, err)
step("unknown cluster: clean CLI error")

# Create.
osc("database", "cluster", "create", "c1", "k2hdkc", version,
    "--instance", "flavor=1,volume=1", "--instance", "flavor=1,volume=1",
    "--instance", "flavor=1,volume=1")
c, ips = cluster_ready("c1", 3)
step(f"cluster c1 ACTIVE at {' '.join(ips)}")

keys = {f"key-{n}": f"value-{n}".encode() for n in range(300)}
for n, (k, v) in enumerate(keys.items()):
    assert mc(ips[n % len(ips)]).set(k, v, noreply=False), k
check_keys(ips, keys, "after create")
step(f"{len(keys)} keys written and read back at every member")

# Grow by one.
osc("database", "cluster", "grow", "c1", "--instance", "flavor=1,volume=1")
c, ips = cluster_ready("c1", 4)
check_keys(ips, keys, "after grow")
step(f"grown to 4 members, every key at every member ({' '.join(ips)})")

# Shrink by one (the first member, which started the cluster).
members = osj("database", "cluster", "list", "instances", "c1")
victim = members[0]["ID"]
osc("database", "cluster", "shrink", "c1", victim)
c, ips = cluster_ready("c1", 3)
assert victim not in [m["ID"] for m in osj("database", "cluster", "list", "instances", "c1")]
check_keys(ips, keys, "after shrink")
step(f"shrunk to 3 members without {victim}, no key lost")

# Backup of a member, then restore into a new instance.
member = osj("database", "cluster", "list", "instances", "c1")[0]["ID"]
b = osj("database", "backup", "create", "bk1", "--instance", member, "--description", "system test")
bid = b["id"]

def backup_done():
    s = osj("database", "backup", "show", bid)
    assert s["status"] != "FAILED", s
    return True if s["status"] == "COMPLETED" else s
wait("backup bk1", backup_done)
bs = osj("database", "backup", "show", bid)
step(f"backup {bid} COMPLETED, {bs['size']} GB at {bs['locationRef']}")

osc("database", "instance", "create", "r1", "--flavor", "1", "--size", "1",
    "--datastore", "k2hdkc", "--datastore-version", version, "--backup", bid)

def restored():
    i = osj("database", "instance", "show", "r1")
    assert i["status"] != "ERROR", i
    return True if i["status"] == "ACTIVE" else i
wait("instance r1", restored)
r1 = osj("database", "instance", "show", "r1")
rip = r1["ip"] if isinstance(r1["ip"], str) else r1["ip"][0]
rip = rip.split(",")[0].strip()
SEEN_IPS.add(rip)
check_keys([rip], keys, "restored instance")
step(f"instance r1 restored from the backup at {rip}: every key there")

# Delete everything.
osc("database", "instance", "delete", "r1")
osc("database", "cluster", "delete", "c1")

def gone():
    cl = osj("database", "cluster", "list")
    il = osj("database", "instance", "list")
    return True if not cl and not il else (cl, il)
wait("deletes", gone)
osc("database", "backup", "delete", bid)
step("cluster, instance and backup deleted")

print("IPS", " ".join(sorted(SEEN_IPS)), flush=True)
print("all trove checks passed", flush=True)
