"""Packaging for mindie_like.

torch has a floor, not a pin: Ascend users must pair torch with the torch_npu build their CANN supports.
On CPU-only machines install `torch==2.13.0` first (bin/install does), so pip never pulls CUDA wheels.
"""
from setuptools import find_packages, setup

setup(
    name="mindie_like",
    version="0.1.0",
    description="A MindIE-style LLM serving daemon: one config, mutual TLS, OpenAI API, function calling",
    packages=find_packages(include=["mindie_like", "mindie_like.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.3",
        # 5.x: `rope_parameters` (partial rotary, yarn's mscale) and the deepseek_v3 / glm4_moe configs as the own
        # model code reads them; tested with 5.25
        "transformers>=5.0,<6",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "gguf>=0.10",
        "accelerate>=0.30",
        "pydantic>=2.6",
        "aiohttp>=3.9",
        "cryptography>=42",
        "prometheus-client>=0.20",
        "jinja2>=3.1",
        "llguidance>=1.0",
        "orjson>=3.9",
        "numpy>=1.24",
        "tqdm>=4.60",
        "ninja>=1.11",   # builds the optional AVX2 kernels (backend_atb/csrc: bf16 GEMV, int8/int4) on first use
    ],
    extras_require={
        "npu": ["torch_npu"],
        # openai >= 1.66 has client.responses; anthropic: its Messages client (tests/e2e/test_responses_and_messages)
        # schemathesis: the OpenAPI fuzzing of the daemon (tests/e2e/test_openapi_fuzz.py); 4.x is the API used there
        # pytest-isolated: the native-kernel test modules run in their own process, so a segfault fails them only
        "dev": ["pytest>=8", "pytest-timeout>=2.2", "pytest-isolated>=0.6,<0.7", "hypothesis>=6.100", "openai>=1.66",
                "anthropic>=0.50", "jsonschema>=4.0", "schemathesis>=4.30,<5", "requests>=2.31", "pyyaml>=6",
                # kubernetes-validate: checks deploy/k8s/ against the Kubernetes schemas (no cluster needed)
                "kubernetes-validate>=1.30"],
        # the SGLang Model Gateway (a Rust binary in a wheel) that bin/ms_coordinator runs; its TLS front, nginx,
        # comes from the system (bin/install installs Debian's nginx-light when it runs as root with apt-get)
        "coordinator": ["smg==1.13.0"],
        # llama-cpp-python: the peer in the engine and serving benchmarks (its OpenAI server needs the five after
        # it: the names of its [server] extra, listed here so pip does not rebuild it); partial-json-parser:
        # bench_tool_parse's baseline
        "bench": ["llama-cpp-python>=0.3", "uvicorn>=0.22", "fastapi>=0.100", "sse-starlette>=1.6",
                  "starlette-context>=0.3.6", "pydantic-settings>=2.0.1", "partial-json-parser>=0.2", "py-spy>=0.3"],
    },
    include_package_data=True,
    package_data={"mindie_like.backend_atb": ["csrc/*.cpp", "csrc/*.h"]},   # optional CPU kernels, built on first use
    zip_safe=False,
)
