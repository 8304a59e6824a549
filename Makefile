# undebug: every entry point a developer or CI needs. `make demo` and `make test` do all
# set-up themselves on a fresh Debian machine (see README.md).

PYTHON     ?= python3
VENV       := .venv
VPY        := $(VENV)/bin/python
BUILD      := $(CURDIR)/build
GUEST      := $(BUILD)/refguest.elf
APT_TOOLS  := qemu-system-x86_64:qemu-system-x86 gdb:gdb gcc:gcc make:make tmux:tmux lldb:lldb \
              /usr/share/doc/libc6-dbg:libc6-dbg
# The baselines `make bench` measures against (lttng-gen-tp comes with liblttng-ust-dev).
BENCH_APT  := lttng-gen-tp:liblttng-ust-dev lttng-sessiond:lttng-tools babeltrace2:babeltrace2

.PHONY: setup guest demo test bench bench-deps lint clean

# Debian packages (non-interactive) whose command is missing: $(call apt_missing,WHO,PAIRS),
# PAIRS "command:package", or "/path:package" for a package with no command (libc6-dbg:
# the host libc's debug symbols, which the symbol-name tests compare with gdb's).
define apt_missing
	@missing=""; for pair in $(2); do \
	  case $${pair%%:*} in /*) test -e $${pair%%:*} ;; *) command -v $${pair%%:*} >/dev/null 2>&1 ;; esac \
	    || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "$(1): installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

# Debian tools only when missing, then the venv and the package.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(call apt_missing,setup,$(APT_TOOLS))
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	touch $@

guest:
	$(MAKE) -C guest-stubs/refguest OUT=$(BUILD)

demo: setup guest
	$(VENV)/bin/undebug demo

test: setup guest
	$(VENV)/bin/lint-imports --no-cache
	$(VPY) -m pytest -q

# The baselines' packages too, so that LTTng-UST and babeltrace2 are measured, not skipped.
bench-deps:
	$(call apt_missing,bench,$(BENCH_APT))

bench: setup guest bench-deps
	$(VPY) -m bench

lint: setup
	$(VENV)/bin/ruff check undebug tracers tui tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(BUILD)
