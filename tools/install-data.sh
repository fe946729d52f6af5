#!/bin/sh
# Install Fashion-MNIST from Debian's dataset-fashion-mnist package when we can
# (root and apt-get); otherwise say that the bundled scikit-learn digits are used.
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ] || [ -n "${EDL_DATA_DIR:-}" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist) ..."
    if apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; then
        exit 0
    fi
fi
echo "Fashion-MNIST is not installed and could not be installed here;"
echo "the demo and tests fall back to scikit-learn's bundled digits (set EDL_DATA_DIR to use your copy)."
exit 0
