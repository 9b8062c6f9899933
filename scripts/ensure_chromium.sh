#!/usr/bin/env bash
# Browser tests drive Debian's chromium through Playwright (playwright cannot download browsers offline).
set -euo pipefail
command -v chromium >/dev/null && fc-list | grep -qi "color emoji" && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium fonts-dejavu-core fonts-noto-color-emoji
