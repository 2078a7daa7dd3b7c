# Debian packages with CPack: `cpack -G DEB` in the build directory (or
# `cpack --config <build>/CPackConfig.cmake -B <out>`) writes two packages, one per install
# component (see the install() calls in the top-level CMakeLists.txt):
#   libbatchnorm1     runtime: libbatchnorm.so.<version> (1.1.0) and its SONAME link libbatchnorm.so.1
#   libbatchnorm-dev  headers, libbatchnorm.so, the CMake package and batchnorm.pc
# Install both with `apt install ./libbatchnorm1_*.deb ./libbatchnorm-dev_*.deb`.
# Paths are those of the configured CMAKE_INSTALL_LIBDIR under /usr: configure with
# -DCMAKE_INSTALL_PREFIX=/usr to get Debian's multiarch libdir (lib/<triplet>); the default
# prefix gives /usr/lib, which the loader, CMake and pkg-config search as well.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME batchnorm)
set(CPACK_PACKAGE_VENDOR "libbatchnorm")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)  # the ABI check's debug info stays in the build tree
set(CPACK_COMPONENTS_ALL runtime dev)

set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # <package>_<version>_<arch>.deb
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "libbatchnorm maintainers <libbatchnorm@localhost>")
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)

# Runtime: named after the SONAME (Debian policy 8.1). Its dependencies (libc6, libstdc++6,
# libgcc-s1, libtbb12) come from dpkg-shlibdeps on the library itself; the shlibs file and
# the ldconfig trigger are generated so that packages linking it get "libbatchnorm1 (>= <version>)"
# (a minor version adds functions: a program built against 1.1.0 may need them).
set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME libbatchnorm${PROJECT_VERSION_MAJOR})
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")
set(CPACK_DEBIAN_RUNTIME_DESCRIPTION "${PROJECT_DESCRIPTION} (shared library)
 libbatchnorm implements the Keras BatchNormalization layer (training and
 inference, renorm, ghost batches, mixed precision) behind a stable C ABI.
 This package holds the shared library.")

# Development: exactly this build's runtime (the unversioned link points into it), and
# libtbb-dev because batchnorm.pc names tbb in Requires.private, which pkg-config resolves
# even for a dynamic link. The CMake package needs nothing beyond the library.
set(CPACK_DEBIAN_DEV_PACKAGE_NAME libbatchnorm-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
  "libbatchnorm${PROJECT_VERSION_MAJOR} (= ${PROJECT_VERSION}), libtbb-dev")
set(CPACK_DEBIAN_DEV_DESCRIPTION "${PROJECT_DESCRIPTION} (development files)
 libbatchnorm implements the Keras BatchNormalization layer (training and
 inference, renorm, ghost batches, mixed precision) behind a stable C ABI.
 This package holds the C header, the header-only C++17 wrapper, the CMake
 package (find_package(batchnorm)) and the pkg-config file.")

include(CPack)
