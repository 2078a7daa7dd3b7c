#!/usr/bin/env bash
# Self-test of abi/check.sh on a toy library: the check must pass an unchanged library, an
# added function and a private layout change, and fail a removed function and a changed
# parameter type. Without it, a check that never fails would look like a passing one.
#   abi/selftest.sh <work-dir>
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$1
if ! command -v abidiff >/dev/null || ! command -v abidw >/dev/null; then
  echo "SKIP: abidw/abidiff not found (Debian: apt install abigail-tools)"
  exit 77
fi
rm -rf "$work" && mkdir -p "$work/inc"
cp "$here/selftest/toy.h" "$work/inc/"
build() {  # build <name> <defines...>
  local name=$1; shift
  cc -g -O2 -shared -fPIC -I"$work/inc" "$@" "$here/selftest/toy.c" -o "$work/lib$name.so" || exit 1
}
build base
abidw --headers-dir "$work/inc" --drop-private-types --no-corpus-path --no-comp-dir-path \
  --no-show-locs --exported-interfaces-only --out-file "$work/base.abi" "$work/libbase.so" || exit 1
failures=0
expect() {  # expect pass|fail <name> <defines...>
  local want=$1 name=$2; shift 2
  build "$name" "$@"
  # The header is compiled with the variant's macros; abidiff reads it as text only to
  # tell public types from private ones.
  if bash "$here/check.sh" "$work/base.abi" "$work/lib$name.so" "$work/inc" >"$work/$name.log" 2>&1
  then got=pass; else got=fail; fi
  if [ "$got" = "$want" ]; then echo "ok: $name -> $got"
  else echo "WRONG: $name -> $got, expected $want"; cat "$work/$name.log"; failures=$((failures + 1)); fi
}
expect pass unchanged
expect pass added -DTOY_ADDED
expect pass private_layout -DTOY_PRIVATE_FIELD
expect fail removed -DTOY_NO_GET
expect fail changed_parameter -DTOY_SET_FLOAT
[ "$failures" -eq 0 ]
