#!/usr/bin/env bash
# Fuzz the wire parsers (cluster/proto/fuzz) with cargo-fuzz: each target runs RUNS executions
# (default 10 million) and the executions libFuzzer reports are printed at the end. A crash
# stops the run with libFuzzer's report and the input under cluster/proto/fuzz/artifacts/.
#
#   scripts/fuzz.sh                      # every target, 10M runs each
#   RUNS=100000 scripts/fuzz.sh native   # one target, fewer runs
#
# Needs cargo-fuzz (installed from crates.io when missing). cargo-fuzz needs a nightly compiler;
# on the stable toolchain RUSTC_BOOTSTRAP=1 unlocks the sanitizer flags it passes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
runs=${RUNS:-10000000}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(memcached_text memcached_binary native)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

# Seed corpora: every step of the differential scripts (text and meta) as one input, plus a
# few hand-made binary and native packets.
corpus=cluster/proto/fuzz/corpus
mkdir -p "$corpus/memcached_text" "$corpus/memcached_binary" "$corpus/native"
python3 - "$root" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
out = root / "cluster/proto/fuzz/corpus"
def unescape(line):
    line = re.sub(r"\{rep:(\d+):([^}]*)\}", lambda m: m.group(2) * min(int(m.group(1)), 64), line)
    line = re.sub(r"\{cas:[^}]*\}", "1", line)
    b, i = bytearray(), 0
    esc = {"r": 13, "n": 10, "t": 9, "s": 32, "\\": 92, "{": 123}
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            n = line[i + 1]
            if n == "x" and i + 3 < len(line):
                b.append(int(line[i + 2:i + 4], 16)); i += 4; continue
            if n in esc:
                b.append(esc[n]); i += 2; continue
        b.extend(c.encode()); i += 1
    return bytes(b)
n = 0
for f in sorted((root / "tests/data/differential").glob("*.txt")):
    text = f.read_text()
    if "@protocol binary" in text:
        continue
    for line in text.splitlines():
        if line and not line.startswith("#") and not line.startswith("@"):
            (out / "memcached_text" / f"seed-{n:05}").write_bytes(unescape(line)); n += 1
def bin_req(op, key=b"", extras=b"", value=b"", opaque=7):
    body = extras + key + value
    return (bytes([0x80, op]) + len(key).to_bytes(2, "big") + bytes([len(extras), 0, 0, 0])
            + len(body).to_bytes(4, "big") + opaque.to_bytes(4, "big") + bytes(8) + body)
seeds = [bin_req(0x00, b"k"), bin_req(0x01, b"k", bytes(8), b"value"), bin_req(0x05, b"n", bytes(20)),
         bin_req(0x1c, b"k", bytes(4)), bin_req(0x0a) + bin_req(0x09, b"k"), bin_req(0x08, extras=bytes(4))]
for i, s in enumerate(seeds):
    (out / "memcached_binary" / f"seed-{i}").write_bytes(s)
def tlv(tag, v):
    return bytes([tag]) + len(v).to_bytes(4, "big") + v
def native(op, body, rid=1):
    return bytes([0xD7, 1, op, 0]) + rid.to_bytes(4, "big") + len(body).to_bytes(4, "big") + body
for i, s in enumerate([native(0x00, b""), native(0x10, tlv(1, b"key")),
                       native(0x20, tlv(1, b"k") + tlv(2, b"v") + tlv(4, (7).to_bytes(4, "big"))),
                       native(0x10, tlv(1, b"a"), 1) + native(0x22, tlv(1, b"a"), 2)]):
    (out / "native" / f"seed-{i}").write_bytes(s)
PY

summary=()
for t in "${targets[@]}"; do
    log=$(mktemp)
    echo "fuzz: $t, $runs runs" >&2
    (cd cluster/proto && RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "fuzz/corpus/$t" -- \
        -runs="$runs" -max_len=4096 -print_final_stats=1) 2>&1 | tee "$log" | grep -E "^#[0-9]+.*(pulse|DONE)|Done|ERROR|panicked" >&2 || true
    done_line=$(grep -Eo "Done [0-9]+ runs in [0-9]+ second" "$log" | tail -1 || true)
    if [ -z "$done_line" ]; then
        echo "fuzz: $t did not finish; see $log" >&2
        exit 1
    fi
    summary+=("$t: $done_line")
    rm -f "$log"
done
printf '%s\n' "${summary[@]}"
