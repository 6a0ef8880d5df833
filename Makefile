# The two commands: `make run` and `make test`.  Both install what is
# missing (scripts/deps.sh), then build.
BUILD ?= build
CC ?= clang
JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 60

.PHONY: all deps build build-gcc run test fuzz bench tcb image clean

all: build

deps:
	@scripts/deps.sh

# One line per step; the compiler's and make's output goes to
# $(BUILD)/build.log and is shown (its last lines, without the progress
# and directory chatter) only when
# the build fails.  `make build VERBOSE=1` shows everything as it happens.
build: deps
	@mkdir -p $(BUILD)
	@printf 'configure  %s\n' '$(BUILD)'
	@CC=clang cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >$(BUILD)/configure.log 2>&1 || \
		{ cat $(BUILD)/configure.log; echo "configure failed (log: $(BUILD)/configure.log)"; exit 1; }
ifeq ($(VERBOSE),)
	@printf 'build      %s (log: %s)\n' '$(BUILD)' '$(BUILD)/build.log'
	@cmake --build $(BUILD) -j $(JOBS) >$(BUILD)/build.log 2>&1 || \
		{ grep -vE 'Entering directory|Leaving directory|^\[ *[0-9]+%\]' $(BUILD)/build.log | tail -n 40; \
		  echo "build failed (whole log: $(BUILD)/build.log)"; exit 1; }
else
	@cmake --build $(BUILD) -j $(JOBS)
endif

# The library, the program and the PKCS#11 module once more with gcc, Debian's
# cc, whose -Werror warnings differ from clang's (-Wformat-truncation,
# -Wmaybe-uninitialized): a user's plain `cmake` build must not fail.
build-gcc: deps
	@mkdir -p $(BUILD)/gcc
	@printf 'build      %s with gcc (log: %s)\n' '$(BUILD)/gcc' '$(BUILD)/gcc/build.log'
	@{ CC=gcc cmake -S . -B $(BUILD)/gcc -DCMAKE_BUILD_TYPE=RelWithDebInfo && \
	   cmake --build $(BUILD)/gcc -j $(JOBS) --target cloister cloister_pkcs11; } >$(BUILD)/gcc/build.log 2>&1 || \
		{ grep -vE 'Entering directory|Leaving directory|^\[ *[0-9]+%\]' $(BUILD)/gcc/build.log | tail -n 40; \
		  echo "the gcc build failed (whole log: $(BUILD)/gcc/build.log)"; exit 1; }

# the whole local deployment: nsm-sim, the enclave in its own network
# namespace, cloister host, IMDS; Ctrl-C stops it
run: build
	@$(BUILD)/cloister dev

test: build build-gcc
	@scripts/node-deps.sh
	@printf 'test       ctest -j %s (each test on one line; output of those that fail)\n' '$(JOBS)'
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

fuzz: build
	@scripts/fuzz.sh $(BUILD) $(FUZZ_SECONDS)

bench: build
	@scripts/node-deps.sh
	@bench/run.sh $(BUILD)

# an enclave image of cloister + examples/hello (AWS's blobs: BLOBS=DIR,
# default /usr/share/nitro_enclaves/blobs; more with IMAGE_ARGS="--fqdn NAME
# --add SRC=DEST --enclave-arg ARG", scripts/image.sh --help); docs/eif.md
image: build
	@scripts/image.sh --cloister $(BUILD)/cloister --out $(BUILD)/image $(if $(BLOBS),--blobs $(BLOBS)) $(IMAGE_ARGS)

# lines of code inside the enclave: the trusted computing base
tcb:
	@scripts/tcb.sh

clean:
	rm -rf $(BUILD)
