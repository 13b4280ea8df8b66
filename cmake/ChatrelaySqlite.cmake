# Provides the target chatrelay::sqlite3.
#  - CHATRELAY_SQLITE_DIR set (scripts/setup fetches the pinned amalgamation into
#    .deps/sqlite): compile it once as a static library with FTS5.  Both presets
#    (windows, and native with its unit tests, durability tests and fuzzer) and
#    the native external project of the windows build set it, with the same
#    definitions: what the tests run is the SQLite that ships in chatrelay.exe
#    (tests/unit/test_sqlite_build.c checks the version and the options).
#  - otherwise find_package(SQLite3) (system package, vcpkg, MSYS2).
if(CHATRELAY_SQLITE_DIR AND EXISTS "${CHATRELAY_SQLITE_DIR}/sqlite3.c")
  add_library(chatrelay_sqlite3 STATIC "${CHATRELAY_SQLITE_DIR}/sqlite3.c")
  target_include_directories(chatrelay_sqlite3 SYSTEM PUBLIC "${CHATRELAY_SQLITE_DIR}")
  target_compile_definitions(chatrelay_sqlite3 PRIVATE
    SQLITE_ENABLE_FTS5 SQLITE_DQS=0 SQLITE_DEFAULT_MEMSTATUS=0 SQLITE_OMIT_DEPRECATED
    SQLITE_DEFAULT_WAL_SYNCHRONOUS=1 SQLITE_THREADSAFE=1 SQLITE_OMIT_LOAD_EXTENSION)
  if(WIN32)
    # Plain ReadFile/WriteFile for database pages: with an OVERLAPPED every page
    # I/O costs an extra wineserver round trip, on the relay's only thread.
    target_compile_definitions(chatrelay_sqlite3 PRIVATE SQLITE_WIN32_NO_OVERLAPPED)
  endif()
  # The amalgamation is third-party code: build it optimised even in Debug and without our warnings.
  target_compile_options(chatrelay_sqlite3 PRIVATE $<$<NOT:$<C_COMPILER_ID:MSVC>>:-O2 -w>)
  if(NOT WIN32)
    # THREADSAFE=1 needs the threads library; FTS5's bm25 calls log() from libm.
    find_package(Threads REQUIRED)
    target_link_libraries(chatrelay_sqlite3 PUBLIC Threads::Threads m)
  endif()
  add_library(chatrelay::sqlite3 ALIAS chatrelay_sqlite3)
elseif(CHATRELAY_SQLITE_DIR)
  message(FATAL_ERROR "CHATRELAY_SQLITE_DIR=${CHATRELAY_SQLITE_DIR} has no sqlite3.c: run scripts/setup first")
else()
  find_package(SQLite3 REQUIRED)
  add_library(chatrelay::sqlite3 ALIAS SQLite::SQLite3)
endif()
