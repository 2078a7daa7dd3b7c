#!/usr/bin/env bash
# The ABI guard: compares a built libbatchnorm with the committed baseline.
#   abi/check.sh <baseline.abi> <libbatchnorm.so> <public-header-dir>
# Only types defined in the public headers count (--hd2, --drop-private-types): the layouts
# behind the opaque bn_config and bn_layer may change freely.
#
# abidiff's exit status is a bit set: 1 error, 2 usage error, 4 ABI change, 8 incompatible
# ABI change (a removed symbol, ...). Added functions are fine (a minor release), so they are
# left out of the comparison (--no-added-syms); what is left in is a change to something
# the baseline exported, and for a C ABI every such change breaks old binaries (a parameter
# of type double that became float is only bit 4). So the check fails on any non-zero status:
# bits 8 and 4 (a change to the existing ABI), 1 and 2 (the check itself could not run).
# A deliberate, compatible addition is recorded by regenerating the baseline (abi/update.sh).
set -uo pipefail
baseline=$1 lib=$2 headers=$3
if ! command -v abidiff >/dev/null; then
  echo "SKIP: abidiff not found (Debian: apt install abigail-tools)"
  exit 77
fi
abidiff --hd2 "$headers" --drop-private-types --no-added-syms --fail-no-debug-info \
  "$baseline" "$lib"
status=$?
if [ "$status" -ne 0 ]; then
  echo "ABI check FAILED (abidiff status $status:$([ $((status & 1)) -ne 0 ] && echo ' error')$([ $((status & 2)) -ne 0 ] && echo ' usage')$([ $((status & 4)) -ne 0 ] && echo ' change')$([ $((status & 8)) -ne 0 ] && echo ' incompatible'))"
  echo "The exported ABI differs from $baseline in something it already had."
  echo "Restore it, or -- for a new SONAME only -- regenerate the baseline with abi/update.sh."
  exit 1
fi
echo "ABI check passed: everything in $baseline is unchanged (additions are allowed)."
