# Cross-compile chatrelay.exe on Linux with mingw-w64 and run its tests under Wine.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)
set(CHATRELAY_MINGW_PREFIX x86_64-w64-mingw32)
set(CMAKE_C_COMPILER ${CHATRELAY_MINGW_PREFIX}-gcc)
set(CMAKE_RC_COMPILER ${CHATRELAY_MINGW_PREFIX}-windres)
set(CMAKE_MC_COMPILER ${CHATRELAY_MINGW_PREFIX}-windmc)
set(CMAKE_FIND_ROOT_PATH /usr/${CHATRELAY_MINGW_PREFIX})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
# No mingw runtime DLLs next to the exe: a user copies one file.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static -static-libgcc")
# Test executables run under Wine in the project-local prefix (scripts/wine prepares it).
set(CMAKE_CROSSCOMPILING_EMULATOR "${CMAKE_CURRENT_LIST_DIR}/../scripts/wine")
