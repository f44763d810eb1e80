#!/usr/bin/env bash
# Install the virtual display (Xvfb) and the Mesa/OpenGL and xcb libraries napari's canvas and
# Qt need, when any is missing. QT_QPA_PLATFORM=offscreen is not enough: napari fails as soon as
# a layer is drawn without a real OpenGL context. Headless Chromium (Debian `chromium`) is for
# the test that screenshots report.html.
set -euo pipefail
PACKAGES="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 libxcb-icccm4
libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 chromium"
missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
