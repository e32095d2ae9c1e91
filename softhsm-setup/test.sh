#!/usr/bin/env bash
# softhsm-setup/test.sh - moved to scripts/test.sh; this forwards to it (arguments and exit status).
exec bash "$(dirname -- "${BASH_SOURCE[0]}")/../scripts/test.sh" "$@"
