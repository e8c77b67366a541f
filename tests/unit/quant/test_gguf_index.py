"""gguf_index.GGUFIndex (the tensor table without the vocabulary) reads what gguf.GGUFReader reads: every tensor's
name, type, shape and data, and every scalar / string field; array fields (a vocabulary) are skipped."""
from __future__ import annotations

import numpy as np

from mindie_like.backend_atb.gguf_index import GGUFIndex


def test_index_matches_gguf_reader(tmp_path):
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("tiny")
    w.add_block_count(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_token_list([f"tok{i}" for i in range(300)])                  # string array: skipped
    w.add_token_types([1] * 300)                                        # int array: skipped
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_bool("test.flag", True)
    rng = np.random.default_rng(0)
    w.add_tensor("a.weight", rng.standard_normal((3, 64)).astype(np.float32))
    w.add_tensor("b.weight", rng.standard_normal((64,)).astype(np.float16))
    for name, kind in (("c.weight", T.Q8_0), ("f.weight", T.Q5_0)):
        w.add_tensor(name, quantize(rng.standard_normal((4, 256)).astype(np.float32), kind), raw_dtype=kind)
    for name, kind, size in (("d.weight", T.Q4_K, 144), ("e.weight", T.Q6_K, 210)):     # any bytes: layout only
        w.add_tensor(name, rng.integers(0, 256, (4, size), dtype=np.uint8), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ix, r = GGUFIndex(path), gguf.GGUFReader(str(path))
    assert [t.name for t in ix.tensors] == [t.name for t in r.tensors]
    for a, b in zip(ix.tensors, r.tensors):
        assert a.tensor_type == b.tensor_type and list(a.shape) == list(b.shape), a.name
        assert a.data.shape == b.data.shape and a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data)
    scalar = {k for k, f in r.fields.items() if f.types and f.types[0] != gguf.GGUFValueType.ARRAY
              and not k.startswith("GGUF.")}           # the header, which GGUFReader lists as fields
    assert set(ix.fields) == scalar and "general.architecture" in scalar and "test.flag" in scalar
    for k in scalar:
        f, g = ix.fields[k], r.fields[k]
        assert np.array_equal(np.asarray(f.parts[f.data[0]]), np.asarray(g.parts[g.data[0]])), k
