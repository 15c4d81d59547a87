#!/usr/bin/env bash
# Install LLM Lens's desktop entry, icons and AppStream metainfo for the current user
# (under ${XDG_DATA_HOME:-~/.local/share}); no root needed.
#
#   packaging/install-desktop-entry.sh [PATH/TO/llmlens]    # default: the built bundle
#   packaging/install-desktop-entry.sh --uninstall
#
# Works from the checkout (packaging/) and from a built bundle's top folder (build.sh copies
# it there). The entry's Exec is the absolute path of the executable, so moving the bundle
# later means running this again.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ID=io.github.llmlens.LLMLens
DATA="${XDG_DATA_HOME:-$HOME/.local/share}"
SIZES="16 24 32 48 64 128 256 512"

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$DATA/applications/$ID.desktop" "$DATA/metainfo/$ID.metainfo.xml" \
          "$DATA/icons/hicolor/scalable/apps/llmlens.svg"
    for s in $SIZES; do rm -f "$DATA/icons/hicolor/${s}x${s}/apps/llmlens.png"; done
    echo "Removed the LLM Lens desktop entry and icons from $DATA"
    exit 0
fi

for r in "$HERE/../resources" "$HERE/_internal/resources" "$HERE/resources"; do
    if [ -f "$r/$ID.desktop" ]; then RES="$(cd "$r" && pwd)"; break; fi
done
[ -n "${RES:-}" ] || { echo "install-desktop-entry: resources/ not found next to $HERE" >&2; exit 1; }

EXE="${1:-}"
if [ -z "$EXE" ]; then
    for e in "$HERE/llmlens" "$HERE/dist/llmlens/llmlens"; do
        if [ -x "$e" ] && [ -f "$e" ]; then EXE="$e"; break; fi
    done
fi
[ -n "$EXE" ] && [ -x "$EXE" ] || {
    echo "install-desktop-entry: no llmlens executable (build it: packaging/build.sh, or pass its path)" >&2
    exit 1
}
EXE="$(cd "$(dirname "$EXE")" && pwd)/$(basename "$EXE")"

mkdir -p "$DATA/applications" "$DATA/metainfo" "$DATA/icons/hicolor/scalable/apps"
# Exec and TryExec point at this executable; quoted for the Exec key's rules (spaces in paths).
sed -e "s|^Exec=.*|Exec=\"$EXE\" %f|" -e "/^Exec=/a TryExec=$EXE" \
    "$RES/$ID.desktop" > "$DATA/applications/$ID.desktop"
cp "$RES/$ID.metainfo.xml" "$DATA/metainfo/"
cp "$RES/llmlens.svg" "$DATA/icons/hicolor/scalable/apps/llmlens.svg"
for s in $SIZES; do
    mkdir -p "$DATA/icons/hicolor/${s}x${s}/apps"
    cp "$RES/icons/llmlens-$s.png" "$DATA/icons/hicolor/${s}x${s}/apps/llmlens.png"
done
# Refresh the menus' caches where the tools exist; desktops also notice new files on their own.
command -v update-desktop-database >/dev/null && update-desktop-database -q "$DATA/applications" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$DATA/icons/hicolor" || true
echo "Installed $DATA/applications/$ID.desktop (Exec: $EXE) and icons under $DATA/icons/hicolor"
