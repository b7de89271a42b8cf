#!/usr/bin/env bash
# The whole test suite: unit, integration, property, crash and system tests of every crate.
# Tests that need PostgreSQL or RabbitMQ read DATABASE_URL / AMQP_URL and are skipped (with a
# printed reason) without them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The machine's PostgreSQL and RabbitMQ, when they answer and nothing else was chosen.
if [ -z "${DATABASE_URL:-}" ] && (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
    echo "test: using PostgreSQL at $DATABASE_URL" >&2
fi
if [ -z "${AMQP_URL:-}" ] && (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    export AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f
    echo "test: using RabbitMQ at $AMQP_URL" >&2
fi
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
