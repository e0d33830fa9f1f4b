#!/usr/bin/env bash
# Debian's Chromium for the browser end-to-end test (driven by Playwright's Python
# package; Playwright's own browser download is never used).
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "chromium missing and no root: the browser test will be skipped" >&2; exit 0; }
  SUDO="sudo"
fi
command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: install chromium yourself; the browser test will be skipped" >&2; exit 0; }
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
