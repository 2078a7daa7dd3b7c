# The ABI check (abi/check.sh) compares the built library with the committed baseline
# abi/libbatchnorm.abi. abidiff sees types only through DWARF, so the C boundary's
# translation unit -- the one that defines every exported bn_* function -- always carries
# debug info, in Release too. It changes no generated code; the Debian packages strip it
# (CPACK_STRIP_FILES in cmake/packaging.cmake).
set_property(SOURCE capi/batchnorm_capi.cpp APPEND PROPERTY COMPILE_OPTIONS -g)
