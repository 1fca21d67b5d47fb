# Two entry points, each doing its own set-up: `make demo` and `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: setup configure build demo test sanitize clean

setup:
	@bash scripts/setup.sh

configure: setup
	@cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# Builds an engine from the bundled MNIST CNN, saves it, loads it back and classifies held-out digits.
demo: build
	@$(BUILD)/kiln_mnist_demo samples/mnist/mnist_cnn.onnx ../shared/datasets/mnist $(BUILD)/mnist_cnn.kiln

# The whole test suite (unit tests, CLI tests, ONNX conformance) through ctest.
test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer.
sanitize:
	@$(MAKE) test BUILD=build-asan CMAKE_FLAGS="-DKILN_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo"

clean:
	rm -rf $(BUILD)
