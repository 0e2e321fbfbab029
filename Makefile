# The two commands: `make demo` (a running chat) and `make test` (everything).
.PHONY: demo demo-down test bench

demo:
	scripts/demo up

demo-down:
	scripts/demo down

test:
	scripts/test

bench:
	scripts/bench
