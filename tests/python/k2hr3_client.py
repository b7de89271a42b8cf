"""The real k2hr3client (PyPI 1.1.3) drives the K2HR3-compatible service of k2hdkc-dbaas.

Usage: k2hr3_client.py BASE_URL USER PASSWORD TENANT

Every step goes through k2hr3client's own objects and K2hr3Http; where the client cannot do
a thing at all (its deletes are sent as HEAD, quirk 1 in the reference), the step is done a
second time with plain urllib and the effect is checked, so the test proves the service
really deletes. Prints one line per step; exits non-zero at the first failure.
"""

import json
import sys
import urllib.error
import urllib.request

from k2hr3client.http import K2hr3Http
from k2hr3client.list import K2hr3List
from k2hr3client.policy import K2hr3Policy
from k2hr3client.resource import K2hr3Resource
from k2hr3client.role import K2hr3Role, K2hr3RoleHost, K2hr3TokenType
from k2hr3client.token import K2hr3AuthType, K2hr3RoleToken, K2hr3RoleTokenList, K2hr3Token

BASE, USER, PASSWORD, TENANT = sys.argv[1:5]
TEMPLATE = """{{#!k2hr3template }}
[GLOBAL]
NAME = {{= %cluster-name% }}
REPLICA = {{= %replicas% }}
{{ %hosts% = %yrn:yahoo:::TENANT:role:demo-cluster/server/hosts/ip% }}
{{ foreach %key% in %hosts% }}
{{ %h% = %hosts%{%key%} }}
[SVRNODE]
NAME = {{= %h%{'host'} }}
CUK = {{= %h%{'cuk'} }}
{{ done }}
""".replace("TENANT", TENANT)

failed = False


def step(name, ok, detail=""):
    global failed
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail else ""), flush=True)
    if not ok:
        failed = True
        sys.exit(1)


def body(api):
    resp = api.resp
    return json.loads(resp.body) if resp is not None and resp.body else None


def raw(method, path, token=None, data=None):
    """A plain request: (status, parsed body or None)."""
    req = urllib.request.Request(BASE + path, method=method)
    if token:
        req.add_header("x-auth-token", token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
        req.data = json.dumps(data).encode()
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text


http = K2hr3Http(BASE)

# 1. An unscoped and a scoped token from credentials.
tok = K2hr3Token(TENANT, None, auth_type=K2hr3AuthType.CREDENTIAL)
step("scoped token from credentials", http.POST(tok.create(USER, PASSWORD)), "")
utoken = tok.token
step("token is returned", bool(utoken) and len(utoken) >= 32, utoken[:8] + "...")
show = K2hr3Token(TENANT, utoken)
step("show token", http.GET(show.show()))
b = body(show)
step("token is scoped to the tenant", b["scoped"] is True and [t["name"] for t in b["tenants"]] == [TENANT.lower()], str(b))
step("validate token (HEAD)", http.HEAD(K2hr3Token(TENANT, utoken).validate()))
bad = K2hr3Token(TENANT, None, auth_type=K2hr3AuthType.CREDENTIAL)
step("wrong password is refused", not http.POST(bad.create(USER, PASSWORD + "x")))

# 2. A resource with keys (the cluster config template).
res = K2hr3Resource(utoken)
step(
    "create resource",
    http.POST(
        res.create_conf_resource(
            "demo-cluster",
            "string",
            TEMPLATE,
            {"cluster-name": "demo-cluster", "replicas": 2},
            [],
        )
    ),
)
res_show = K2hr3Resource(utoken, resource_path="demo-cluster")
step("get resource", http.GET(res_show.get()))
b = body(res_show)
step("resource keeps its keys", b["resource"]["keys"]["cluster-name"] == "demo-cluster", str(b["resource"]["keys"]))
step("resource keeps the template", "k2hr3template" in b["resource"]["string"])

# 3. A policy that allows reading the resource.
ryrn = f"yrn:yahoo:::{TENANT.lower()}:resource:demo-cluster"
pol = K2hr3Policy(utoken)
step(
    "create policy",
    http.POST(pol.create("demo-cluster-acr", "allow", ["yrn:yahoo::::action:read"], [ryrn], None, [])),
)
pol_get = K2hr3Policy(utoken)
step("get policy", http.GET(pol_get.get("demo-cluster-acr", None)))
b = body(pol_get)
step("policy names the resource", ryrn in b["policy"]["resource"], str(b["policy"]))

# 4. Roles with that policy: the cluster role and its server sub-role.
pyrn = f"yrn:yahoo:::{TENANT.lower()}:policy:demo-cluster-acr"
role = K2hr3Role(utoken)
step("create role", http.POST(role.create("demo-cluster", [pyrn], [])))
sub = K2hr3Role(utoken)
step("create sub-role", http.POST(sub.create("demo-cluster/server", [pyrn], [])))
step("validate role (HEAD)", http.HEAD(K2hr3Role(utoken).validate_role("demo-cluster/server")))

# A host added by the user, with the client's placeholder fields.
host = K2hr3RoleHost("10.1.0.7", 8020, "cuk-user-added", "extra", "tag", None, None)
add = K2hr3Role(utoken)
step("add host with user token", http.POST(add.add_member("demo-cluster/server", host, False, "false")))

# 5. A role token, its list with registerpath.
rt = K2hr3RoleToken(utoken, "demo-cluster/server", 3600)
step("create role token", http.GET(rt))
rtoken = rt.token
step("role token is returned", bool(rtoken) and len(rtoken) >= 32)
rl = K2hr3RoleTokenList(utoken, "demo-cluster/server", True)
step("list role tokens", http.GET(rl))
step("role token list has a registerpath", bool(rl.registerpath(rtoken)))

# 6. Register this host with the role token (what k2hr3-init.sh does).
reg = K2hr3Role(rtoken, token_type=K2hr3TokenType.ROLE_TOKEN)
step(
    "register host with role token",
    http.PUT(reg.add_member_with_roletoken("demo-cluster/server", 8020, "cuk-self", "k2hdkc", "server", None, None)),
)
got = K2hr3Role(utoken)
step("get role", http.GET(got.get("demo-cluster/server", True)))
b = body(got)
hosts = json.dumps(b["role"]["hosts"])
step("role lists both hosts", "10.1.0.7" in hosts and "127.0.0.1" in hosts and "cuk-self" in hosts, hosts)

# 7. Read the expanded resource with the role token.
rr = K2hr3Resource(roletoken=rtoken, resource_path=ryrn)
step("read resource with role token", http.GET(rr.get()))
b = body(rr)
text = b["resource"] if isinstance(b["resource"], str) else json.dumps(b["resource"])
step(
    "resource is expanded for the role",
    "NAME = demo-cluster" in text and "REPLICA = 2" in text and "NAME = 127.0.0.1" in text
    and "NAME = 10.1.0.7" in text and "CUK = cuk-self" in text and "{{" not in text,
    text.replace("\n", "|"),
)
rk = K2hr3Resource(roletoken=rtoken, resource_path=ryrn)
step("read one key with role token", http.GET(rk.get_with_roletoken("keys", "cluster-name")))

# 8. The list API.
for kind, want in [("role", "demo-cluster"), ("resource", "demo-cluster"), ("policy", "demo-cluster-acr")]:
    lst = K2hr3List(utoken, kind)
    step(f"list {kind}", http.GET(lst.get()))
    step(f"list {kind} names it", want in json.dumps(body(lst)), json.dumps(body(lst)))

# 9. Cross-tenant and cross-role refusals, malformed bodies (plain requests).
st, b = raw("GET", "/v1/resource/yrn:yahoo:::other-tenant:resource:demo-cluster", "R=" + rtoken)
step("role token cannot read another tenant", st == 403 and b["result"] is False, f"{st} {b}")
st, b = raw("POST", "/v1/role", "U=" + utoken, None)
step("empty role body is 400", st == 400 and b["result"] is False and b["message"], f"{st} {b}")
st, b = raw("GET", "/v1/role/demo-cluster/server", "R=" + utoken)
step("a user token posing as a role token is 401", st == 401, f"{st} {b}")

# 10. Delete everything, as the client does it (HEAD: success, nothing changes) ...
step("client: delete role token", http.DELETE(K2hr3Role(utoken).delete_roletoken_with_string(rtoken)))
step("client: delete host", http.DELETE(K2hr3Role(utoken).delete_member("demo-cluster/server", "10.1.0.7", "8020", "cuk-user-added")))
step("client: delete sub-role", http.DELETE(K2hr3Role(utoken).delete("demo-cluster/server")))
step("client: delete role", http.DELETE(K2hr3Role(utoken).delete("demo-cluster")))
step("client: delete policy", http.DELETE(K2hr3Policy(utoken).delete("demo-cluster-acr")))
step("client: delete resource", http.DELETE(K2hr3Resource(utoken, resource_path="demo-cluster").delete_with_scopedtoken("keys", None)))
st, _ = raw("GET", "/v1/role/demo-cluster/server", "U=" + utoken)
step("HEAD deleted nothing", st == 200, str(st))

# ... and for real, with DELETE.
for path in [
    "/v1/role/token/" + rtoken,
    "/v1/role/demo-cluster/server?host=10.1.0.7&port=8020&cuk=cuk-user-added",
    "/v1/role/demo-cluster/server",
    "/v1/role/demo-cluster",
    "/v1/policy/demo-cluster-acr",
    "/v1/resource/demo-cluster",
]:
    st, b = raw("DELETE", path, "U=" + utoken)
    step("DELETE " + path.split("?")[0][:40], st == 204, f"{st} {b}")
st, b = raw("GET", "/v1/resource/" + ryrn, "R=" + rtoken)
step("revoked role token is refused", st == 401, f"{st} {b}")
for path in ["/v1/role/demo-cluster", "/v1/policy/demo-cluster-acr", "/v1/resource/demo-cluster"]:
    st, _ = raw("GET", path, "U=" + utoken)
    step("gone: " + path, st == 404, str(st))
lst = K2hr3List(utoken, "role")
step("list after delete", http.GET(lst.get()))
step("list is empty", "demo-cluster" not in json.dumps(body(lst)), json.dumps(body(lst)))
print("all k2hr3client checks passed")
