#!/usr/bin/env bash
# The whole test suite. Integration tests start their own registry processes on 127.0.0.1 and make their own
# base images from busybox-static, so nothing else needs to be running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo test --workspace --all-targets
