#!/usr/bin/env bash
# Quick start 1: set up, build, and run the main job (the digits demo).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
"$BUILD_DIR/examples/demo/bn_digits_demo" "$@"
