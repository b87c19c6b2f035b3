# Sanitizer builds: CLATTN_SANITIZE="" (off), "address,undefined" or "thread".
#
# The flags are added directory-wide (add_compile_options / add_link_options) before any
# target is declared, so the library, the CLI, the tests and the fuzz targets are all
# instrumented alike; a mix of instrumented and plain objects hides bugs (ASan misses
# accesses from plain code) or reports false races (TSan does not see plain code's
# synchronisation).
set(CLATTN_SANITIZE "" CACHE STRING "Sanitizers to build with: empty, address,undefined, or thread")
set_property(CACHE CLATTN_SANITIZE PROPERTY STRINGS "" "address,undefined" "thread")

if(CLATTN_SANITIZE)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "CLATTN_SANITIZE needs gcc or clang (compiler is ${CMAKE_C_COMPILER_ID})")
  endif()
  if(CLATTN_SANITIZE STREQUAL "address,undefined" OR CLATTN_SANITIZE STREQUAL "undefined,address")
    # UBSan only prints and carries on by default; -fno-sanitize-recover makes the first
    # report fail the program, so ctest sees it.
    set(CLATTN_SANITIZE_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined)
  elseif(CLATTN_SANITIZE STREQUAL "thread")
    set(CLATTN_SANITIZE_FLAGS -fsanitize=thread)
  else()
    message(FATAL_ERROR "CLATTN_SANITIZE='${CLATTN_SANITIZE}': expected empty, address,undefined or thread")
  endif()
  # Frame pointers give whole stacks in reports at no real cost; -g gives file:line even
  # in the default Release build.
  list(APPEND CLATTN_SANITIZE_FLAGS -fno-omit-frame-pointer -g)
  add_compile_options(${CLATTN_SANITIZE_FLAGS})
  add_link_options(${CLATTN_SANITIZE_FLAGS})
  message(STATUS "clattn: sanitizers ${CLATTN_SANITIZE} (${CLATTN_SANITIZE_FLAGS})")
endif()

# libFuzzer targets (tests/fuzz): clang only. Every object gets the fuzzer's coverage
# instrumentation (-fsanitize=fuzzer-no-link), so the fuzzer is guided by the library code
# it reaches, not only by the small target files; without another choice the sanitizers
# are ASan and UBSan, which turn silent memory errors into crashes the fuzzer reports.
option(CLATTN_FUZZ "Build the libFuzzer targets in tests/fuzz (clang only)" OFF)
if(CLATTN_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "CLATTN_FUZZ needs clang (libFuzzer); configure with -DCMAKE_C_COMPILER=clang")
  endif()
  if(NOT CLATTN_SANITIZE)
    add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined
                        -fno-omit-frame-pointer -g)
    add_link_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined)
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link)
  add_link_options(-fsanitize=fuzzer-no-link)
endif()
