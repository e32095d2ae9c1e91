#!/usr/bin/env bash
# softhsm-setup/demo.sh - moved to scripts/demo.sh; this forwards to it (arguments and exit status).
exec bash "$(dirname -- "${BASH_SOURCE[0]}")/../scripts/demo.sh" "$@"
