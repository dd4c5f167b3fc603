-- wrk script: every request is a non-streaming chat completion.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "bench-model", "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Say hello in one short sentence, please."}], "max_tokens": 16}'
-- LiteLLM's proxy needs a key; the others ignore it (loadgen.BENCH_KEY).
wrk.headers["Authorization"] = "Bearer sk-llmsvc-bench-0123456789abcdef0123456789abcdef"
