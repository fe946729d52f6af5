#!/bin/sh
# Install what the demo and the tests use from Debian when we can (root and apt-get):
# - Fashion-MNIST (package dataset-fashion-mnist); otherwise the bundled scikit-learn digits are used;
# - a headless Chromium (package chromium), which renders report.html in the tests; otherwise that test skips.
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
updated=
apt_install() {
    if [ -z "$updated" ]; then
        apt-get update -qq >/dev/null 2>&1 || return 1
        updated=1
    fi
    apt-get install -y -qq "$@" >/dev/null 2>&1
}

dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ] || [ -n "${EDL_DATA_DIR:-}" ]; then
    :
elif can_apt && echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist) ..." \
        && apt_install dataset-fashion-mnist; then
    :
else
    echo "Fashion-MNIST is not installed and could not be installed here;"
    echo "the demo and tests fall back to scikit-learn's bundled digits (set EDL_DATA_DIR to use your copy)."
fi

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    :
elif can_apt && echo "installing Chromium (Debian package chromium, renders report.html in the tests) ..." \
        && apt_install chromium; then
    :
else
    echo "Chromium is not installed and could not be installed here; the report.html screenshot test skips."
fi
exit 0
