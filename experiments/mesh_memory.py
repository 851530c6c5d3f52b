"""Per-device memory of 7-8B targets on device meshes: `python -m experiments.mesh_memory`.

Params (plain layout) and the KV cache (k and v for `--max_len` slots per row)
per device under `sharding.RULES` (`sharding.bytes_per_device`), in bfloat16,
for Llama-3-8B and Qwen2.5-7B, as a markdown table. A dimension a mesh axis
does not divide is replicated (Qwen2.5-7B's 4 KV heads on model:8: its cache
is not split over "model"). Activations, logits and a draft model come on top.
"""

from absl import app, flags

from specjax import sharding
from specjax.models.config import ModelConfig

MODELS = {
    "Llama-3-8B": ModelConfig(arch="llama", vocab_size=128256, dim=4096, num_layers=32,
                              num_heads=32, num_kv_heads=8, head_dim=128, ffn_dim=14336,
                              rope_theta=500000.0, dtype="bfloat16"),
    "Qwen2.5-7B": ModelConfig(arch="qwen2", vocab_size=152064, dim=3584, num_layers=28,
                              num_heads=28, num_kv_heads=4, head_dim=128, ffn_dim=18944,
                              rope_theta=1000000.0, qkv_bias=True, dtype="bfloat16"),
}
MESHES = ("model:1", "model:2", "model:4", "model:8", "data:2,model:4")

_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "Batch sizes (rows of the KV cache).")
_MAX_LEN = flags.DEFINE_integer("max_len", 4096, "KV cache slots per row.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Parameter and cache dtype.")


def table(batches: list[int], max_len: int, dtype: str) -> str:
    """The markdown table: one row per (model, mesh), GiB per device."""
    gib = 2.0 ** 30
    head = ["model", "mesh", "devices", "params"] + [f"KV b={b}" for b in batches] \
        + [f"total b={b}" for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cfg in MODELS.items():
        for spec in MESHES:
            shape = sharding.parse_mesh_shape(spec)
            est = [sharding.bytes_per_device(cfg, shape, b, max_len, dtype) for b in batches]
            devices = shape.get("data", 1) * shape.get("model", 1)
            cells = [name, spec, str(devices), f"{est[0]['params'] / gib:.2f}"] \
                + [f"{e['kv_cache'] / gib:.2f}" for e in est] \
                + [f"{e['total'] / gib:.2f}" for e in est]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    batches = [int(b) for b in _BATCHES.value]
    print(f"GiB per device, {_DTYPE.value}, max_len {_MAX_LEN.value} "
          "(sharding.bytes_per_device: params + KV cache under sharding.RULES)\n")
    print(table(batches, _MAX_LEN.value, _DTYPE.value))


if __name__ == "__main__":
    app.run(main)
