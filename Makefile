# tern build. `make` builds build/tern; `make test` runs every test; `make run` boots the default guest.
CC      ?= cc
CSTD    := -std=c11 -D_GNU_SOURCE
WARN    := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wvla
CFLAGS  ?= -O2 -g
CPPFLAGS += -Isrc
LDLIBS  := -lZydis -lpthread -lm -lz -llz4 -llzma -lzstd -lbz2 -ljson-c

SRCS     := $(shell find src -name '*.c' | sort)
LIB_SRCS := $(filter-out src/main.c,$(SRCS))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
KVM_SRCS  := $(wildcard tests/kvm/test_*.c)

# Build in parallel by default (tests still run one at a time, in tests/run.sh).
MAKEFLAGS += -j$(shell nproc 2>/dev/null || echo 2)

# Two trees: build/ (optimized, what users run) and build-asan/ (tests, ASan+UBSan).
B  := build
BA := build-asan
ASAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

OBJS   := $(LIB_SRCS:%.c=$(B)/%.o)
AOBJS  := $(LIB_SRCS:%.c=$(BA)/%.o)

.PHONY: all test unit run guest clean format check-format bench asan
all: $(B)/tern

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(CFLAGS) $(CPPFLAGS) -MMD -MP -c $< -o $@

$(BA)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(ASAN_FLAGS) $(CPPFLAGS) -MMD -MP -c $< -o $@

# The archives are rebuilt when the set of sources changes (a removed file must leave them).
SRCLIST_NOW := $(shell echo $(LIB_SRCS) | md5sum | cut -c1-12)
$(B)/.srcs-$(SRCLIST_NOW) $(BA)/.srcs-$(SRCLIST_NOW):
	@mkdir -p $(dir $@) && rm -f $(dir $@).srcs-* && touch $@

$(B)/libtern.a: $(OBJS) $(B)/.srcs-$(SRCLIST_NOW)
	@rm -f $@
	ar rcs $@ $(OBJS)

$(BA)/libtern.a: $(AOBJS) $(BA)/.srcs-$(SRCLIST_NOW)
	@rm -f $@
	ar rcs $@ $(AOBJS)

$(B)/tern: $(B)/src/main.o $(B)/libtern.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BA)/tern: $(BA)/src/main.o $(BA)/libtern.a
	$(CC) $(ASAN_FLAGS) -o $@ $^ $(LDLIBS)

# Unit and KVM tests: one program per file, built with ASan+UBSan.
UNIT_BINS := $(UNIT_SRCS:tests/%.c=$(BA)/tests/%)
KVM_BINS  := $(KVM_SRCS:tests/%.c=$(BA)/tests/%)

$(BA)/tests/%: tests/%.c $(BA)/libtern.a
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(ASAN_FLAGS) $(CPPFLAGS) -Itests -o $@ $< $(wildcard tests/$(dir $*)lib/*.c) $(BA)/libtern.a $(LDLIBS) -lcmocka

asan: $(BA)/tern $(UNIT_BINS) $(KVM_BINS)

guest:
	bash guest/build.sh

# Everything: unit tests, KVM backend tests, end-to-end tests on the real guest.
test: all asan guest
	bash tests/run.sh

unit: asan
	TERN_TEST_ONLY=unit bash tests/run.sh

run: 
	bash scripts/deps.sh
	$(MAKE) all guest
	$(B)/tern run

bench: all guest
	bash bench/boot

format:
	clang-format -i $(SRCS) $(shell find src tests -name '*.h')

check-format:
	clang-format --dry-run --Werror $(SRCS) $(shell find src tests -name '*.h')

# Differential fuzzing of the emulator against the host CPU: millions of
# cases, minutes long, so not part of `make test`. FUZZ_EMU_CASES, FUZZ_EMU_SEED.
FUZZ_EMU_CASES ?= 2000000
$(BA)/tests/fuzz/emu_diff_fuzz: tests/fuzz/emu_diff_fuzz.c tests/unit/test_emu_diff.c $(BA)/libtern.a
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(ASAN_FLAGS) $(CPPFLAGS) -Itests -o $@ $< $(wildcard tests/unit/lib/*.c) $(BA)/libtern.a $(LDLIBS) -lcmocka

.PHONY: fuzz-emu
fuzz-emu: $(BA)/tests/fuzz/emu_diff_fuzz
	$< $(FUZZ_EMU_CASES) $(FUZZ_EMU_SEED)

clean:
	rm -rf $(B) $(BA)

-include $(shell find $(B) $(BA) -name '*.d' 2>/dev/null)

# libFuzzer harness for qcow2 parsing (not part of `make test`): make fuzz-qcow2 FUZZ_TIME=60
FUZZ_TIME ?= 60
BF := build-fuzz
.PHONY: fuzz-qcow2
$(BF)/qcow2_fuzz: tests/fuzz/qcow2_fuzz.c $(wildcard src/block/*.c src/block/*.h) src/util/log.c src/util/dl.c
	@mkdir -p $(BF)
	clang $(CSTD) -g -O1 -fsanitize=fuzzer,address,undefined $(CPPFLAGS) -o $@ $< $(wildcard src/block/*.c) src/util/log.c src/util/dl.c -lz -lpthread

fuzz-qcow2: $(BF)/qcow2_fuzz
	bash tests/fuzz/qcow2_seeds.sh $(BF)/qcow2-corpus
	$(BF)/qcow2_fuzz -max_total_time=$(FUZZ_TIME) -max_len=65536 -close_fd_mask=2 $(BF)/qcow2-corpus

# libFuzzer harness for the volume image index (not part of `make test`): make fuzz-volume FUZZ_TIME=60
.PHONY: fuzz-volume
$(BF)/volume_fuzz: tests/fuzz/volume_fuzz.c src/block/volume.c src/block/volume.h src/util/log.c
	@mkdir -p $(BF)
	clang $(CSTD) -g -O1 -fsanitize=fuzzer,address,undefined $(CPPFLAGS) -o $@ $< src/block/volume.c src/util/log.c -lz

fuzz-volume: $(BF)/volume_fuzz $(B)/tern
	bash tests/fuzz/volume_seeds.sh $(B)/tern $(BF)/volume-corpus
	$(BF)/volume_fuzz -max_total_time=$(FUZZ_TIME) -max_len=65536 -close_fd_mask=2 $(BF)/volume-corpus
