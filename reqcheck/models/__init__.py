"""Model loading and scoring: base models from a Hub id, a directory or a GGUF file (`loading`), the
label scores at the invocation position (`scoring`) and KV-cache handling (`kvcache`)."""
