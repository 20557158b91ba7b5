"""Generation engines (hf, vllm) writing candidate sets: sample, score, best-of-N."""
