# chatrelay_warnings(target): strict warnings for our own code only (never for sqlite3.c).
function(chatrelay_warnings target)
  if(MSVC)
    # C4200/C4204 flag standard C11 (flexible array members, non-constant
    # aggregate initialisers) as extensions; the CRT's "unsafe function"
    # deprecations would reject portable snprintf/fopen code.
    target_compile_options(${target} PRIVATE /W4 /WX /wd4200 /wd4204)
    target_compile_definitions(${target} PRIVATE _CRT_SECURE_NO_WARNINGS)
  else()
    target_compile_options(${target} PRIVATE -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wvla)
  endif()
  if(MINGW)
    # C99 printf (%zu, %lld) from mingw rather than msvcrt's, stated rather
    # than left to -std=c11's side effect.
    target_compile_definitions(${target} PRIVATE __USE_MINGW_ANSI_STDIO=1)
  endif()
  if(WIN32)
    target_compile_definitions(${target} PRIVATE WIN32_LEAN_AND_MEAN _WIN32_WINNT=0x0601 UNICODE _UNICODE)
  endif()
endfunction()
