# Regenerates docs/operators.md into memory and compares it with the committed one. The ONNX columns come
# from the installed onnx package, so with another onnx version than the doc's the test is skipped
# (its SKIP_REGULAR_EXPRESSION matches "not compared").
# The doc lists the CUDA backend's ops too: a Kiln built without it cannot regenerate it.
if(NOT WITH_CUDA)
  message("this Kiln was built without the CUDA backend, whose ops docs/operators.md lists: not compared")
  return()
endif()
execute_process(COMMAND ${PYTHON} -c "import onnx; print(onnx.__version__)"
                OUTPUT_VARIABLE onnx_version OUTPUT_STRIP_TRAILING_WHITESPACE)
file(READ ${SRC}/docs/operators.md committed)
string(FIND "${committed}" "onnx package ${onnx_version};" found)
if(found EQUAL -1)
  message("docs/operators.md was made with another onnx package than the installed ${onnx_version}: not compared")
  return()
endif()
execute_process(COMMAND ${PYTHON} ${SRC}/scripts/gen_operators.py ${KILN}
                OUTPUT_VARIABLE generated RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "scripts/gen_operators.py failed")
endif()
if(NOT generated STREQUAL committed)
  message(FATAL_ERROR "docs/operators.md is stale: run  python3 scripts/gen_operators.py build/kiln > docs/operators.md")
endif()
