# Regenerates docs/operators.md into the build folder and compares it with the committed one.
execute_process(COMMAND ${PYTHON} ${SRC}/scripts/gen_operators.py ${KILN}
                OUTPUT_VARIABLE generated RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "scripts/gen_operators.py failed")
endif()
file(READ ${SRC}/docs/operators.md committed)
if(NOT generated STREQUAL committed)
  message(FATAL_ERROR "docs/operators.md is stale: run  python3 scripts/gen_operators.py build/kiln > docs/operators.md")
endif()
