#!/usr/bin/env bash
# The Debian packages: runs cpack -G DEB on the build tree into a scratch directory, checks
# both packages' control fields and file lists, unpacks them (dpkg-deb -x, never installed on
# this machine) into a scratch root, and builds and runs the consumer project against that
# root only: with find_package(batchnorm 1) and with pkg-config, from C and from C++.
# It also checks that apt could install them here: every dependency is either the sibling
# package or a package installed on this machine at a satisfying version.
#   deb.sh <build-dir> <source-dir> <work-dir>
set -euo pipefail
build_dir=$1 source_dir=$2 work=$3
for tool in cpack dpkg-deb dpkg-shlibdeps dpkg; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not found (Debian: apt install dpkg-dev)"; exit 77; }
done
fail() { echo "FAIL: $*" >&2; exit 1; }
# Output is matched through here-strings, never `cmd | grep -q`: grep -q exits at the first
# match, the writer may then die of SIGPIPE, and pipefail turns that into a failure.
rm -rf "$work" && mkdir -p "$work"

version=$(sed -n 's/^set(CPACK_PACKAGE_VERSION "\(.*\)")$/\1/p' "$build_dir/CPackConfig.cmake")
major=${version%%.*}
arch=$(dpkg --print-architecture)
runtime=libbatchnorm$major dev=libbatchnorm-dev
echo "== cpack -G DEB (version $version, $arch)"
cpack -G DEB --config "$build_dir/CPackConfig.cmake" -B "$work/out" >"$work/cpack.log" 2>&1 \
  || { cat "$work/cpack.log"; fail "cpack failed"; }
rt_deb=$work/out/${runtime}_${version}_${arch}.deb
dev_deb=$work/out/${dev}_${version}_${arch}.deb
[ -f "$rt_deb" ] && [ -f "$dev_deb" ] || { ls "$work/out"; fail "expected $rt_deb and $dev_deb"; }
[ "$(ls "$work/out"/*.deb | wc -l)" -eq 2 ] || fail "more than two packages: $(ls "$work/out"/*.deb)"

# --- control fields ---
field() { dpkg-deb -f "$1" "$2"; }
expect_field() {  # expect_field <deb> <field> <expected value>
  local got; got=$(field "$1" "$2")
  [ "$got" = "$3" ] || fail "$(basename "$1") $2: got '$got', expected '$3'"
}
for deb in "$rt_deb" "$dev_deb"; do
  expect_field "$deb" Version "$version"
  expect_field "$deb" Architecture "$arch"
  [ -n "$(field "$deb" Maintainer)" ] && [ -n "$(field "$deb" Description)" ] || fail "$deb: no Maintainer/Description"
done
expect_field "$rt_deb" Package "$runtime"
expect_field "$rt_deb" Section libs
expect_field "$dev_deb" Package "$dev"
expect_field "$dev_deb" Section libdevel
rt_depends=$(field "$rt_deb" Depends)
dev_depends=$(field "$dev_deb" Depends)
echo "   $runtime Depends: $rt_depends"
echo "   $dev Depends: $dev_depends"
# The runtime's dependencies come from dpkg-shlibdeps: oneTBB's runtime and the C/C++ runtimes.
for dep in libtbb12 libc6 'libstdc\+\+6'; do
  grep -Eq "(^|, )$dep( |,|$)" <<<"$rt_depends" || fail "$runtime does not depend on $dep"
done
grep -Eq "(^|, )$runtime \(= $version\)(,|$)" <<<"$dev_depends" || fail "$dev must depend on $runtime (= $version)"
grep -Eq "(^|, )libtbb-dev(,|$| )" <<<"$dev_depends" || fail "$dev must depend on libtbb-dev (batchnorm.pc requires tbb)"
# shlibs: what makes dpkg-shlibdeps of a consumer package name libbatchnorm1.
dpkg-deb -e "$rt_deb" "$work/control"
grep -qx "libbatchnorm $major $runtime (>= $version)" "$work/control/shlibs" \
  || fail "shlibs: $(cat "$work/control/shlibs" 2>/dev/null)"
# ldconfig after install and removal (a trigger, or -- CMake 3.25 -- postinst/postrm calls).
grep -qs ldconfig "$work/control/triggers" "$work/control/postinst" || fail "no ldconfig on install"

# --- file lists: the split (no file in both, the right files in each) ---
list() { dpkg-deb -c "$1" | awk '{print $6}' | sed 's#^\./#/#' | grep -v '/$' | sort; }
list "$rt_deb" >"$work/runtime.files"
list "$dev_deb" >"$work/dev.files"
echo "   $runtime:"; sed 's/^/     /' "$work/runtime.files"
echo "   $dev:"; sed 's/^/     /' "$work/dev.files"
[ "$(grep -c . "$work/runtime.files")" -eq 2 ] || fail "$runtime must hold exactly the library and its SONAME link"
grep -Eq "^/usr/lib/(.+/)?libbatchnorm\.so\.$version$" "$work/runtime.files" || fail "$runtime lacks libbatchnorm.so.$version"
grep -Eq "^/usr/lib/(.+/)?libbatchnorm\.so\.$major$" "$work/runtime.files" || fail "$runtime lacks libbatchnorm.so.$major"
for f in /usr/include/batchnorm/batchnorm.h /usr/include/batchnorm/batchnorm.hpp; do
  grep -qx "$f" "$work/dev.files" || fail "$dev lacks $f"
done
for re in 'libbatchnorm\.so' 'cmake/batchnorm/batchnormConfig\.cmake' 'cmake/batchnorm/batchnormConfigVersion\.cmake' \
          'cmake/batchnorm/batchnormTargets\.cmake' 'pkgconfig/batchnorm\.pc'; do
  grep -Eq "^/usr/lib/(.+/)?$re$" "$work/dev.files" || fail "$dev lacks $re"
done
grep -q 'libbatchnorm\.so\.' "$work/dev.files" && fail "$dev holds a versioned library"
[ -z "$(comm -12 "$work/runtime.files" "$work/dev.files")" ] || fail "files in both packages"

# --- the packaged library: stripped, SONAME, the exported API ---
root=$work/root
dpkg-deb -x "$rt_deb" "$root"
lib=$(find "$root/usr/lib" -name "libbatchnorm.so.$version" -type f)
grep -q "SONAME.*\[libbatchnorm.so.$major\]" <<<"$(readelf -d "$lib")" || fail "wrong SONAME"
grep -q '\.debug_info' <<<"$(readelf -S "$lib")" && fail "the packaged library is not stripped"
grep -q ' T bn_forward$' <<<"$(nm -D --defined-only "$lib")" || fail "bn_forward not exported"
# The runtime alone must not yet satisfy a link (no unversioned .so): the split is real.
[ -e "$(dirname "$lib")/libbatchnorm.so" ] && fail "$runtime provides libbatchnorm.so"

# --- unpack the dev package over it and build the consumer against that root only ---
dpkg-deb -x "$dev_deb" "$root"
libdir=$(dirname "$lib")
[ "$(readlink -f "$libdir/libbatchnorm.so")" = "$lib" ] || fail "libbatchnorm.so does not resolve to the runtime's library"
echo "== consumer: find_package(batchnorm 1) with CMAKE_PREFIX_PATH=$root/usr"
cmake -S "$source_dir/tests/package/consumer" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$root/usr" \
  -DCMAKE_FIND_USE_CMAKE_SYSTEM_PATH=OFF >/dev/null
grep -q "batchnorm_DIR:PATH=$root/usr" "$work/cmake/CMakeCache.txt" || fail "found a batchnorm outside the root"
cmake --build "$work/cmake" >/dev/null
LD_LIBRARY_PATH=$libdir "$work/cmake/consumer"
LD_LIBRARY_PATH=$libdir "$work/cmake/consumer_cpp"
echo "== consumer: pkg-config"
export PKG_CONFIG_PATH=$libdir/pkgconfig
[ "$(pkg-config --modversion batchnorm)" = "$version" ] || fail "pkg-config version"
cc -std=c99 -Wall -Werror "$source_dir/tests/package/consumer/main.c" -o "$work/pc_consumer" \
  $(pkg-config --cflags --libs batchnorm) -lm
LD_LIBRARY_PATH=$libdir "$work/pc_consumer"
c++ -std=c++17 -Wall -Werror "$source_dir/tests/package/consumer/main.cpp" -o "$work/pc_consumer_cpp" \
  $(pkg-config --cflags --libs batchnorm)
LD_LIBRARY_PATH=$libdir "$work/pc_consumer_cpp"
# Linked against the packaged library, not a build tree's.
grep -q "libbatchnorm.so.$major => $libdir/" <<<"$(LD_LIBRARY_PATH=$libdir ldd "$work/pc_consumer")" \
  || fail "consumer not linked to the package's library"

# --- installability: what `apt install ./both.deb` needs is here (first alternative of each) ---
check_depends() {  # check_depends <Depends field>
  local dep name op ver installed
  IFS=',' read -ra deps <<<"$1"
  for dep in "${deps[@]}"; do
    dep=${dep%%|*}; dep=$(echo "$dep" | xargs)
    name=${dep%% *}; op="" ver=""
    if [[ $dep =~ \(([<>=]+)\ ([^\)]+)\) ]]; then op=${BASH_REMATCH[1]} ver=${BASH_REMATCH[2]}; fi
    if [ "$name" = "$runtime" ]; then installed=$version
    else installed=$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null) || fail "dependency $name is not installed here"
    fi
    case $op in ">=") op=ge;; "<=") op=le;; "=") op=eq;; ">>") op=gt;; "<<") op=lt;; esac
    [ -z "$op" ] || dpkg --compare-versions "$installed" "$op" "$ver" || fail "dependency $dep: $installed here"
  done
}
check_depends "$rt_depends"
check_depends "$dev_depends"

# --- in CI (CI=true, root, nothing of ours installed): apt install ./both.deb for real, build
#     and run the consumers against the system install, then purge them again. A developer's
#     run never touches the machine. ---
if [ "${CI:-}" = "true" ] && [ "$(id -u)" -eq 0 ] && ! dpkg-query -W "$runtime" >/dev/null 2>&1; then
  echo "== CI: apt install ./$(basename "$rt_deb") ./$(basename "$dev_deb")"
  trap 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "$dev" "$runtime" >/dev/null 2>&1 || true' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$(readlink -f "$rt_deb")" "$(readlink -f "$dev_deb")" >/dev/null ||
    fail "apt-get install of the packages failed"
  cmake -S "$source_dir/tests/package/consumer" -B "$work/system" >/dev/null
  cmake --build "$work/system" >/dev/null
  "$work/system/consumer"
  "$work/system/consumer_cpp"
  cc -std=c99 -Wall -Werror "$source_dir/tests/package/consumer/main.c" -o "$work/sys_pc_consumer" \
    $(env -u PKG_CONFIG_PATH pkg-config --cflags --libs batchnorm) -lm
  "$work/sys_pc_consumer"
fi
echo "== both packages built, split, unpacked and consumed"
