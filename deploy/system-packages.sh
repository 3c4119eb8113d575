#!/usr/bin/env bash
# Install the Debian packages ukr-hw uses beyond Python: handwriting-style fonts that cover Cyrillic (rendered
# into extra training glyphs, see ukr_hw/data/fonts.py) and Chromium (the browser test). Quick when all present;
# without root or apt it only says what is missing — everything still works, with fewer synthetic glyphs and the
# browser test skipped.
#   bash deploy/system-packages.sh               # fonts + Chromium (a development machine, CI)
#   bash deploy/system-packages.sh --no-browser  # fonts only (the runtime image, deploy/Dockerfile)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wanted=()
[ -f "$here/fonts.txt" ] && mapfile -t wanted < <(grep -vE '^\s*(#|$)' "$here/fonts.txt")
[ "${1:-}" = "--no-browser" ] || wanted+=(chromium)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
    || echo "warning: could not install ${missing[*]} (continuing without them)" >&2
else
  echo "note: not root or no apt-get; missing optional packages: ${missing[*]}" >&2
fi
exit 0
