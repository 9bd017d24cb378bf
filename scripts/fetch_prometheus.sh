#!/usr/bin/env bash
# Debian's Prometheus server for tests/monitoring/test_prometheus.py, unpacked into .cache/prometheus without
# installing it (no service is started, no root needed when the package lists are there). scripts/test.sh runs it.
# Nothing to do when a `prometheus` is on PATH or already unpacked.
set -euo pipefail
cd "$(dirname "$0")/.."
target=.cache/prometheus
if command -v prometheus > /dev/null || [ -x "$target/usr/bin/prometheus" ]; then
  exit 0
fi
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
fetch() { (cd "$download" && apt-get download -qq prometheus 2> /dev/null); }
# On a fresh machine the package lists may be empty: only root can fill them (CI runs as root).
if ! fetch && ! { [ "$(id -u)" = 0 ] && apt-get update -qq && fetch; }; then
  echo "scripts/fetch_prometheus.sh: could not download Debian's prometheus package; tests/monitoring will fail." >&2
  echo "  Install it (sudo apt-get install prometheus) or run 'sudo apt-get update' and this script again." >&2
  exit 0
fi
mkdir -p "$target"
dpkg-deb -x "$download"/prometheus_*.deb "$target"
echo "prometheus unpacked into $target"
