# The commands of the README. Both set up (or reuse) the environment first.
.PHONY: demo check test test-034 lint

demo:  ## build/load the micro reference model + FIRP heads, compare FIRP with plain decoding
	@py=$$(scripts/setup_env.sh | tail -1) && $$py -m vllm_firp.cli demo $(ARGS)

check:  ## the fast inner loop: ruff, then every test not marked slow (minutes)
	@py=$$(scripts/setup_env.sh | tail -1) && $$py -m ruff check vllm_firp training benchmarks tests && \
	  OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $$py -m pytest -q -m "not slow" $(ARGS)

test:  ## every test: core, reference engine, training, reference model, vLLM plugin on the real engine
	@py=$$(scripts/setup_env.sh | tail -1) && $$py -m ruff check vllm_firp training benchmarks tests && \
	  OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $$py -m pytest -ra $(ARGS) && scripts/test_vllm034.sh

test-034:  ## only the vLLM 0.34 tests, in the 0.34 venv built from ../shared/vllm-0.34
	@scripts/test_vllm034.sh $(ARGS)
