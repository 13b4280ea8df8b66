# From the Windows cross build, also build the native sanitized unit tests and
# the fuzz target (an external project with the host clang) and register them
# here, so one `ctest` run gives one summary for everything.
include(ExternalProject)
set(CHATRELAY_NATIVE_DIR ${CMAKE_BINARY_DIR}/native)
ExternalProject_Add(chatrelay_native
  SOURCE_DIR ${PROJECT_SOURCE_DIR}
  BINARY_DIR ${CHATRELAY_NATIVE_DIR}
  # The same amalgamation as chatrelay.exe, not the system's libsqlite3.
  CMAKE_ARGS -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DCHATRELAY_SANITIZE=ON
             -DCHATRELAY_SQLITE_DIR=${CHATRELAY_SQLITE_DIR}
  INSTALL_COMMAND ""
  BUILD_ALWAYS ON
  USES_TERMINAL_BUILD ON)
foreach(src ${CHATRELAY_UNIT_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_test(NAME native.${name} COMMAND ${CHATRELAY_NATIVE_DIR}/tests/${name})
  set_tests_properties(native.${name} PROPERTIES TIMEOUT 120 LABELS native)
endforeach()
# The libFuzzer run (framing + cleaning + the whole hub) lives in the native
# build's own ctest; run it from here so it is part of the one summary.
# Selected are the fuzz runs themselves: the corpus copies (fixture setups)
# are left out of the selection, and ctest adds them back for the runs that
# need them.  So if no fuzz run is registered (no clang, a renamed test), zero
# tests are selected and --no-tests=error makes that a failure, not a pass.
add_test(NAME native.fuzz
         COMMAND ${CMAKE_CTEST_COMMAND} --test-dir ${CHATRELAY_NATIVE_DIR} -R "^fuzz\\." -E "\\.corpus$"
                 --no-tests=error --output-on-failure)
set_tests_properties(native.fuzz PROPERTIES TIMEOUT 300 LABELS native)
