#!/usr/bin/env bash
# The whole test suite: unit, integration, property, crash and system tests of every crate.
# Tests that need PostgreSQL or RabbitMQ read DATABASE_URL / AMQP_URL and are skipped (with a
# printed reason) without them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
