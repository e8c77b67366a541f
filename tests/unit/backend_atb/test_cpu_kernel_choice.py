"""Which own CPU kernel families run where (cpu_kernels.wanted), from the CPU flags and MINDIE_LIKE_CPU_KERNELS."""
from __future__ import annotations

import pytest

from mindie_like.backend_atb import cpu_kernels, device

AVX2 = frozenset({"avx2", "fma"})
ZEN4 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni"}


@pytest.mark.parametrize("flags,env,quant,float_", [
    (AVX2, None, True, True),              # AVX2 without native bf16: both families
    (ZEN4, None, True, False),             # native bf16: the int8/int4 kernels only; torch's bf16 matmul
    (ZEN4, "1", True, True),               # forced on: everything the CPU can run
    (ZEN4, "0", False, False),             # forced off
    (AVX2, "off", False, False),
    (frozenset({"sse4_2"}), "1", False, False),   # cannot run them: never, even forced
])
def test_families(monkeypatch, flags, env, quant, float_):
    monkeypatch.setattr(device, "cpu_flags", lambda: flags)
    monkeypatch.delenv("MINDIE_LIKE_CPU_BF16", raising=False)
    if env is None:
        monkeypatch.delenv("MINDIE_LIKE_CPU_KERNELS", raising=False)
    else:
        monkeypatch.setenv("MINDIE_LIKE_CPU_KERNELS", env)
    assert cpu_kernels.wanted("quant") is quant
    assert cpu_kernels.wanted("float") is float_
    assert cpu_kernels.wanted() is float_
    if env in ("0", "off"):
        assert cpu_kernels.load() is None
    with pytest.raises(ValueError, match="family"):
        cpu_kernels.wanted("bf16")


def test_a_build_lock_left_by_a_killed_build_is_cleared(tmp_path):
    """torch's `lock` file outlives a build that was killed; the next load must not wait on it forever."""
    from mindie_like.backend_atb import cpu_kernels
    (tmp_path / "lock").write_text("")
    with cpu_kernels._build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
    with cpu_kernels._build_lock(tmp_path):       # and the lock itself is released for the next builder
        pass


def test_every_checkout_of_the_same_sources_shares_one_build(tmp_path, monkeypatch):
    """The build folder is keyed by the sources' content and the environment, not by where the checkout lies:
    a second checkout (a CI clone, a worktree) reuses the kernels `bin/install` built; changed sources do not."""
    import shutil
    monkeypatch.setenv("MINDIE_LIKE_CACHE_DIR", str(tmp_path / "cache"))
    here = cpu_kernels._build_dir()
    other = tmp_path / "other_checkout" / "csrc"
    shutil.copytree(cpu_kernels._CSRC, other)
    monkeypatch.setattr(cpu_kernels, "_CSRC", other)
    assert cpu_kernels._build_dir() == here
    src = cpu_kernels._copy_sources(here)
    assert sorted(p.name for p in src.iterdir() if p.suffix in (".cpp", ".h")) == \
        sorted(p.name for p in other.iterdir())
    (other / "module.cpp").write_text((other / "module.cpp").read_text() + "\n// changed\n")
    assert cpu_kernels._build_dir() != here
