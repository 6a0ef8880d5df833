# The two commands: `make run` and `make test`.  Both install what is
# missing (scripts/deps.sh), then build.
BUILD ?= build
CC ?= clang
JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 60

.PHONY: all deps build run test fuzz bench tcb clean

all: build

deps:
	@scripts/deps.sh

build: deps
	@CC=clang cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# the whole local deployment: nsm-sim, the enclave in its own network
# namespace, cloister host, IMDS; Ctrl-C stops it
run: build
	@$(BUILD)/cloister dev

test: build
	@scripts/node-deps.sh
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

fuzz: build
	@scripts/fuzz.sh $(BUILD) $(FUZZ_SECONDS)

bench: build
	@scripts/node-deps.sh
	@bench/run.sh $(BUILD)

# lines of code inside the enclave: the trusted computing base
tcb:
	@scripts/tcb.sh

clean:
	rm -rf $(BUILD)
