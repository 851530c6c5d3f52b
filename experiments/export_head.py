"""Exports a trained EAGLE / Medusa head to its reference checkpoint layout, or imports one.

    python -m experiments.export_head --head=NAME --out=DIR [--target=smollm2-135m]
    python -m experiments.export_head --import_dir=DIR --kind=eagle --name=NAME \
        --target=smollm2-135m

The export is `model.safetensors` + `config.json` in the tensor names of SafeAILab/EAGLE
(EAGLE-1) or FasterDecoding/Medusa, which serving engines load
(`specjax.training.export`). `--target` is optional for an export (then checked against
the head, and EAGLE's export includes its embedding) and required for an import (the
asset is saved for that target).
"""

from __future__ import annotations

from absl import app, flags

from specjax.training import export

_HEAD = flags.DEFINE_string("head", None, "Head asset name or directory to export.")
_OUT = flags.DEFINE_string("out", None, "Output directory of the export.")
_TARGET = flags.DEFINE_string("target", None, "Target model: asset name, GGUF or HF directory.")
_IMPORT_DIR = flags.DEFINE_string("import_dir", None, "Reference checkpoint directory to import.")
_KIND = flags.DEFINE_enum("kind", None, list(export.KINDS), "Kind of the imported head.")
_NAME = flags.DEFINE_string("name", None, "Name or directory the imported head is saved as.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Dtype the target is loaded in.")


def _load_target(name: str):
    from specjax.models import loading

    return loading.load(name, _DTYPE.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _IMPORT_DIR.value:
        if not (_KIND.value and _NAME.value and _TARGET.value):
            raise app.UsageError("--import_dir needs --kind, --name and --target")
        from specjax.training import assets

        identity = assets.target_identity(_TARGET.value, *_load_target(_TARGET.value))
        out = export.import_head(_IMPORT_DIR.value, _NAME.value, identity, _KIND.value)
        print(f"imported {_KIND.value} head: {out}")
        return
    if not (_HEAD.value and _OUT.value):
        raise app.UsageError("--head and --out are required (or --import_dir=DIR to import)")
    target = _load_target(_TARGET.value) if _TARGET.value else None
    out = export.export_head(_HEAD.value, _OUT.value, target=target)
    print(f"exported to {out}")


if __name__ == "__main__":
    app.run(main)
