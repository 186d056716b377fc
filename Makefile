# hakmem build. `make` builds the libraries; `make test` and `make bench`
# install missing Debian build dependencies first (as root), then run.
CC      ?= cc
PREFIX  ?= /usr/local
BUILD   := build
WARN    := -std=gnu11 -Wall -Wextra -Werror
INC     := -Iuapi -Isrc -Ikmem
CFLAGS_REL := $(WARN) $(INC) -O2 -g -fPIC -fvisibility=hidden -fno-plt -ftls-model=initial-exec
CFLAGS_DBG := $(WARN) $(INC) -O0 -g -fPIC -fvisibility=hidden -DHAK_DEBUG=1
LDLIBS  := -lnuma -luring -lpthread

LIB_SRC  := $(wildcard kmem/*.c) $(filter-out src/override.c,$(wildcard src/*.c))
ALL_SRC  := $(LIB_SRC) src/override.c
HDRS     := $(wildcard uapi/*.h src/*.h kmem/*.h)

REL_OBJ  := $(ALL_SRC:%.c=$(BUILD)/rel/%.o)
DLO_OBJ  := $(ALL_SRC:%.c=$(BUILD)/dlopen/%.o)
DBG_OBJ  := $(ALL_SRC:%.c=$(BUILD)/debug/%.o)
TSAN_OBJ := $(LIB_SRC:%.c=$(BUILD)/tsan/%.o)
UBSAN_OBJ:= $(LIB_SRC:%.c=$(BUILD)/ubsan/%.o)

TEST_SRC := $(wildcard tests/*.c)
BENCH_SRC:= $(wildcard bench/*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_BIN:= $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all lib debug sanitize tests benches test bench deps clean install format
all: lib debug
lib: $(BUILD)/libhakmem.so $(BUILD)/libhakmem.a $(BUILD)/libhakmem-dlopen.so
debug: $(BUILD)/debug/libhakmem.so
sanitize: $(BUILD)/tsan/libhakmem.a $(BUILD)/ubsan/libhakmem.a

$(BUILD)/rel/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	@echo "  CC      $@"; $(CC) $(CFLAGS_REL) -c $< -o $@
$(BUILD)/dlopen/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	@echo "  CC      $@"; $(CC) $(filter-out -ftls-model=initial-exec,$(CFLAGS_REL)) -ftls-model=global-dynamic -DHAK_TLS_DLOPEN -c $< -o $@
$(BUILD)/debug/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	@echo "  CC      $@"; $(CC) $(CFLAGS_DBG) -c $< -o $@
$(BUILD)/tsan/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	@echo "  CC      $@"; $(CC) $(WARN) $(INC) -O1 -g -fPIC -fsanitize=thread -c $< -o $@
$(BUILD)/ubsan/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	@echo "  CC      $@"; $(CC) $(WARN) $(INC) -O1 -g -fPIC -fsanitize=undefined -fno-sanitize-recover=all -c $< -o $@

$(BUILD)/libhakmem.so: $(REL_OBJ)
	$(CC) -shared -o $@ $^ $(LDLIBS)
$(BUILD)/libhakmem-dlopen.so: $(DLO_OBJ)
	$(CC) -shared -o $@ $^ $(LDLIBS)
$(BUILD)/debug/libhakmem.so: $(DBG_OBJ)
	$(CC) -shared -o $@ $^ $(LDLIBS)
$(BUILD)/libhakmem.a: $(REL_OBJ)
	rm -f $@; ar rcs $@ $^
$(BUILD)/tsan/libhakmem.a: $(TSAN_OBJ)
	rm -f $@; ar rcs $@ $^
$(BUILD)/ubsan/libhakmem.a: $(UBSAN_OBJ)
	rm -f $@; ar rcs $@ $^

# Tests link the release archive (malloc itself is hakmem there too);
# tests/run.sh builds the sanitizer variants it needs from the same sources.
$(BUILD)/tests/%: tests/%.c $(BUILD)/libhakmem.a $(HDRS) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -Iuapi -O2 -g -o $@ $< $(BUILD)/libhakmem.a $(LDLIBS)
# A test once more without hakmem (-DTEST_PRELOAD): tests/run.sh runs it
# under LD_PRELOAD with the release or the checked debug library.
$(BUILD)/tests/%_preload: tests/%.c $(HDRS) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -Iuapi -O2 -g -DTEST_PRELOAD -o $@ $< -lpthread
# Tests of the checked build's hooks link its shared library.
$(BUILD)/tests/debug_%: tests/debug_%.c $(BUILD)/debug/libhakmem.so $(HDRS) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -Iuapi -O1 -g -o $@ $< -L$(BUILD)/debug -Wl,-rpath,$(abspath $(BUILD)/debug) -lhakmem -lpthread
# Benchmarks link nothing of ours: the runner picks the allocator with LD_PRELOAD.
$(BUILD)/bench/%: bench/%.c $(wildcard bench/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -O2 -g -o $@ $< -lpthread

PRELOAD_BIN := $(BUILD)/tests/bad_pointers_preload $(BUILD)/tests/fuzz_preload \
	$(BUILD)/tests/span_bounds_preload
tests: lib debug sanitize $(TEST_BIN) $(PRELOAD_BIN)
benches: lib $(BENCH_BIN)

deps:
	@bash .ci/deps

test: deps
	@$(MAKE) --no-print-directory tests
	@bash tests/run.sh

bench: deps
	@$(MAKE) --no-print-directory benches
	@bash bench/run.sh

install: lib
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(BUILD)/libhakmem.so $(BUILD)/libhakmem-dlopen.so $(DESTDIR)$(PREFIX)/lib/
	install -m 644 $(BUILD)/libhakmem.a $(DESTDIR)$(PREFIX)/lib/
	install -m 644 uapi/hakmem.h $(DESTDIR)$(PREFIX)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|'"$$(sed -n 's/^#define HAKMEM_VERSION "\(.*\)"/\1/p' uapi/hakmem.h)"'|' \
	    .ci/hakmem.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/hakmem.pc

format:
	clang-format -i $(wildcard */*.c */*.h tests/*/*.c)

clean:
	rm -rf $(BUILD)
