#!/usr/bin/env bash
# Installs the Debian packages whose photographs the embedded benchmark is built from,
# only when some are missing. Without root or apt-get it says what to do instead.
set -euo pipefail
PACKAGES=(tuxpaint-stamps-default tuxpaint-data mate-backgrounds)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages for the embedded benchmark: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "warning: the embedded benchmark needs the Debian packages: ${missing[*]}" >&2
  echo "  install them (sudo apt-get install ${missing[*]}), or point data.root in" >&2
  echo "  params.yaml at a Waterbirds-format folder (metadata.csv + images)." >&2
fi
