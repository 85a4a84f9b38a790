#!/bin/sh
# ksinstall and ksuninstall of a ksocket release: one script under both names. It runs the installer
# of its name with the release's bundled runtime, so that the host needs no Python: the runtime is
# HERE/ksocket/ksocket in an unpacked release and HERE/lib/ksocket/ksocket in an installed prefix.
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd -P) || exit 1
name=$(basename -- "$0")
for runtime in "$here/lib/ksocket/ksocket" "$here/ksocket/ksocket"; do
    if [ -x "$runtime" ]; then
        exec "$runtime" --installer "$here/$name" "$@"
    fi
done
echo "$name: error: no ksocket runtime in $here (ksocket/ksocket); run it from an unpacked release" >&2
exit 1
